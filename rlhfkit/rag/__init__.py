"""Retrieval-augmented generation on the tuned model (docs/rag.md).

    from rlhfkit.rag import index_documents, Retriever, Answerer, evaluate_qa

    report = index_documents(["docs/"], "sqlite:///rag.db")        # incremental, safe to interrupt
    answerer = Answerer("sqlite:///rag.db", model="runs/demo/ppo/model")
    answer = answerer.ask("How is the KL penalty set?", top_k=5)
    print(answer.answer, [s["file"] for s in answer.to_json()["sources"]])
    print(evaluate_qa(SAMPLE_QA, answerer.retriever).summary())

The same as commands: `rlhfkit rag index | ask | eval` (rlhfkit/cli/rag.py).
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "rag"
SAMPLE_DOCS = SAMPLE_DIR / "docs"  # a shipped corpus: a fictional company's handbook
SAMPLE_QA = SAMPLE_DIR / "qa.jsonl"  # labelled questions on it, for `rlhfkit rag eval`

_EXPORTS = {
    "index_documents": "rlhfkit.rag.indexing", "IndexReport": "rlhfkit.rag.indexing",
    "Retriever": "rlhfkit.rag.answering", "Answerer": "rlhfkit.rag.answering", "Answer": "rlhfkit.rag.answering",
    "fit_prompt": "rlhfkit.rag.answering", "build_messages": "rlhfkit.rag.answering",
    "append_completions": "rlhfkit.rag.answering",
    "evaluate_qa": "rlhfkit.rag.evaluation", "load_qa": "rlhfkit.rag.evaluation",
    "recall_at_k": "rlhfkit.rag.evaluation", "reciprocal_rank": "rlhfkit.rag.evaluation",
    "Chunker": "rlhfkit.rag.chunking", "TokenLimit": "rlhfkit.rag.chunking",
    "Embedder": "rlhfkit.rag.embedding", "get_embedder": "rlhfkit.rag.embedding",
    "open_store": "rlhfkit.rag.stores",
}


def __getattr__(name):  # heavy modules (torch, sentence-transformers) load on first use
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlhfkit.rag' has no attribute {name!r}")


__all__ = ["SAMPLE_DOCS", "SAMPLE_QA", *_EXPORTS]
