"""`rlhfkit rag index | ask | eval`: retrieval-augmented generation on your documents."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

from rlhfkit.config import add_config_command, option

DEFAULT_DB = "sqlite:///rag.db"


@dataclass
class IndexConfig:
    docs: list[str] = option(None, "files and folders to index (text, Markdown, JSONL); folders are searched recursively")
    db: str = option(DEFAULT_DB, "index database: sqlite:///FILE (embedded) or postgresql+psycopg://user:pw@host/db")
    embedder: str | None = option(None, "sentence-transformers model (embedded minilm-l6, hub id or folder); "
                                        "default: the index's own, else minilm-l6")
    chunk_tokens: int = option(200, "tokens per chunk, title included (at most what the embedder takes)")
    overlap: int = option(40, "tokens shared by consecutive chunks of a section")
    model: str = option("smollm2-135m", "policy whose context window must hold --top-k chunks ('none': no limit)")
    top_k: int = option(5, "chunks a question will get (sizes chunks for the policy's context)")
    max_new_tokens: int = option(256, "answer tokens to leave room for in the policy's context")
    rebuild: bool = option(False, "re-embed every file (e.g. with another --embedder); the old index serves until done")
    progress: bool = option(True, "progress bars")


@dataclass
class AskConfig:
    question: str | None = option(None, "the question (positional)")
    questions: str | None = option(None, "file of questions instead: JSONL/CSV rows {question} or {prompt}")
    db: str = option(DEFAULT_DB, "index database (as given to `rag index`)")
    model: str = option("smollm2-135m", "policy: embedded name, hub id, folder or LoRA adapter folder")
    embedder: str | None = option(None, "query encoder (default: the model that built the index)")
    top_k: int = option(5, "chunks retrieved per question")
    n: int = option(1, "answers per question (more than 1 needs --temperature > 0)")
    max_new_tokens: int = option(128, "maximum answer tokens")
    temperature: float = option(0.0, "sampling temperature; 0 = greedy")
    top_p: float = option(1.0, "nucleus sampling threshold (1 = off)")
    seed: int = option(0, "random seed")
    dtype: str = option("float32", "policy weights dtype: float32 or bfloat16")
    json: bool = option(False, "print one JSON object {answer, sources} per question instead of text")
    export: str | None = option(None, "append {prompt, completions, ...} rows for `rlhfkit label import` to this JSONL")


@dataclass
class EvalConfig:
    qa: str = option(None, "QA file: JSONL rows {question, relevant: [doc labels], answer?: text or list}")
    db: str = option(DEFAULT_DB, "index database (as given to `rag index`)")
    k: list[int] = option([1, 3, 5, 10], "cut-offs for recall@k")
    embedder: str | None = option(None, "query encoder (default: the model that built the index)")
    answers: bool = option(True, "check answers for rows that give expected answers (needs the policy)")
    model: str = option("smollm2-135m", "policy for answer checks: embedded name, hub id, folder or adapter folder")
    top_k: int = option(5, "chunks in the answer prompt")
    max_new_tokens: int = option(64, "maximum answer tokens")
    out: str | None = option(None, "write one JSON line per question (retrieved documents, answer, pass) here")
    json: bool = option(False, "print the summary as one JSON object")


def run_index(config: IndexConfig) -> int:
    from rlhfkit.rag.indexing import index_documents

    model = None if (config.model or "none").lower() == "none" else config.model
    report = index_documents(config.docs, config.db, embedder=config.embedder, chunk_tokens=config.chunk_tokens,
                             overlap=config.overlap, model=model, top_k=config.top_k,
                             max_new_tokens=config.max_new_tokens, rebuild=config.rebuild, progress=config.progress)
    print(f"rlhfkit rag index: {report.summary()}")
    return 0


def _questions(config: AskConfig) -> list[str]:
    from rlhfkit.errors import DataError, UserError

    if config.question and config.questions:
        raise UserError("give a question or --questions FILE, not both")
    if config.question:
        return [config.question]
    if not config.questions:
        raise UserError('no question; run: rlhfkit rag ask "your question" (or --questions FILE)')
    from rlhfkit.datafiles import read_records

    out = []
    for row, rec in read_records(config.questions):
        q = rec.get("question", rec.get("prompt"))
        if not isinstance(q, str) or not q.strip():
            raise DataError(config.questions, row, "question", "expected question text (a \"question\" or \"prompt\")")
        out.append(q)
    if not out:
        raise UserError(f"{config.questions}: no questions")
    return out


def run_ask(config: AskConfig) -> int:
    from rlhfkit.rag.answering import Answerer, append_completions

    questions = _questions(config)
    started = time.perf_counter()
    answerer = Answerer(config.db, config.model, embedder=config.embedder, dtype=config.dtype)
    load_seconds = time.perf_counter() - started
    results = []
    try:
        for q in questions:
            a = answerer.ask(q, top_k=config.top_k, n=config.n, max_new_tokens=config.max_new_tokens,
                             temperature=config.temperature, top_p=config.top_p, seed=config.seed)
            results.append(a)
            if config.json:
                print(json.dumps(a.to_json(), ensure_ascii=False), flush=True)
            else:
                if len(questions) > 1:
                    print(f"Q: {q}")
                print(a.to_text(), flush=True)
                if len(questions) > 1:
                    print()
            print(f"rlhfkit rag ask: retrieval {a.retrieve_seconds * 1000:.0f} ms, generation "
                  f"{a.generate_seconds:.1f} s ({config.model}, {len(a.sources)} sources)", file=sys.stderr)
    finally:
        answerer.close()
    if config.export:
        append_completions(config.export, results)
        print(f"rlhfkit rag ask: appended {len(results)} rows x {config.n} answers to {config.export} "
              f"(rank them: rlhfkit label import {config.export})", file=sys.stderr)
    print(f"rlhfkit rag ask: loading took {load_seconds:.1f} s", file=sys.stderr)
    return 0


def run_eval(config: EvalConfig) -> int:
    from rlhfkit.datafiles import write_jsonl
    from rlhfkit.rag.answering import Answerer, Retriever
    from rlhfkit.rag.evaluation import evaluate_qa, load_qa

    items = load_qa(config.qa)
    retriever = Retriever(config.db, config.embedder)
    answerer = None
    try:
        if config.answers and any(i.answers for i in items):
            answerer = Answerer(retriever, config.model)
        report = evaluate_qa(items, retriever, ks=config.k, answerer=answerer, top_k=config.top_k,
                             max_new_tokens=config.max_new_tokens)
    finally:
        retriever.close()
    if config.out:
        write_jsonl(config.out, [r.to_json() for r in report.results])
    if config.json:
        print(json.dumps(report.to_json()))
    else:
        print(f"rlhfkit rag eval: {report.summary()}")
        k5 = max(k for k in report.ks if k <= 5) if any(k <= 5 for k in report.ks) else report.ks[0]
        missed = [r for r in report.results if r.recall[k5] < 1.0]
        for r in missed[:10]:
            got = ", ".join(sorted({doc.rsplit('/', 1)[-1] for _, doc in r.ranking[:k5]}))
            print(f"  missed@{k5} [{r.item.id}] {r.item.question[:70]!r}: wants {r.item.relevant}, got {got}")
        if len(missed) > 10:
            print(f"  ... {len(missed) - 10} more (see --out)")
    return 0


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("rag", help="retrieval-augmented generation: index documents, ask, evaluate")
    rag = parser.add_subparsers(dest="rag_command", metavar="RAG_COMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    add_config_command(rag, "index", "index text, Markdown and JSONL files (incremental: changed files only)",
                       IndexConfig, run_index)
    ask = add_config_command(rag, "ask", "answer a question from the index, with its sources", AskConfig, run_ask,
                             skip=("question",))
    ask.add_argument("question", nargs="?", default=argparse.SUPPRESS, help="the question")
    add_config_command(rag, "eval", "recall@k and MRR (and answer checks) on a QA file", EvalConfig, run_eval)
