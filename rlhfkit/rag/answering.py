"""Retrieval and answers: the question's top-k chunks, a prompt that fits the
policy's context window, sampled or greedy answers, and rows for the ranking app.

The prompt is two chat messages, formatted by the policy's chat template
(`rlhfkit.models.generation.format_prompt`, the same path `generate`, SFT and PPO use):
a system message with the instructions, and a user message holding the
numbered sources, best first, then the question.

Context policy: the prompt plus `max_new_tokens` must fit the policy's context
window. Sources go in best first while the next one fits; the rest are left
out, with a warning, and are not listed as used. A question that does not fit
even with no sources is an error (shorten it or lower --max-new-tokens); it is
never cut. The query encoder reads at most its own limit of a question (256
tokens for MiniLM) and a longer question gets a warning saying so.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.rag.documents import display_path
from rlhfkit.rag.embedding import Embedder, check_embedder, get_embedder
from rlhfkit.rag.stores import Hit, VectorStore, open_store, safe_url

# Chosen by trying a few wordings on SmolLM2-135M-Instruct (docs/rag.md): numbered sources headed by their
# title (file names in the headers got copied into answers), the question last, a one-sentence answer.
SYSTEM_PROMPT = "Answer questions from the sources the user gives. If they do not say, answer that you do not know."
DEFAULT_MODEL = "smollm2-135m"


def _warn(message: str) -> None:
    print(f"rlhfkit rag: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- retrieval


class Retriever:
    """Top-k chunks for a question from an index, embedded with the model that built it."""

    def __init__(self, db: str | VectorStore, embedder: str | Embedder | None = None):
        self.store = open_store(db) if isinstance(db, str) else db
        self.url = db if isinstance(db, str) else self.store.url
        self.meta = self.store.meta()
        if self.meta is None:
            raise UserError(f"the index {safe_url(self.url)} is empty; build it with "
                            f"`rlhfkit rag index --docs FOLDER --db {safe_url(self.url)}`")
        if isinstance(embedder, Embedder):
            self.embedder = embedder
        else:
            self.embedder = get_embedder(embedder or self.meta.embedder)
        check_embedder(self.meta, self.embedder, self.url,
                       f"leave --embedder out (it defaults to the index's model, '{self.meta.embedder}'), or "
                       f"re-index with `rlhfkit rag index --rebuild --embedder {self.embedder.name}`")

    def search(self, question: str, k: int = 5) -> list[Hit]:
        if not question or not question.strip():
            raise UserError("the question is empty; ask something")
        if k < 1:
            raise UserError(f"--top-k {k} must be at least 1")
        n = self.embedder.count_tokens(question)
        if n > self.embedder.max_tokens:
            _warn(f"the question is {n} tokens; the query encoder {self.embedder.name} reads only its first "
                  f"{self.embedder.max_tokens} to search (the model still sees all of it)")
        return self.store.search(self.embedder.encode_query(question), k)

    def close(self) -> None:
        self.store.close()


# ---------------------------------------------------------------- prompts


def format_sources(hits: list[Hit]) -> str:
    parts = []
    for i, hit in enumerate(hits, 1):
        c = hit.chunk
        parts.append(f"[{i}] {c.title or Path(c.path).stem}\n{c.text}")
    return "\n\n".join(parts)


def build_messages(question: str, hits: list[Hit], system: str = SYSTEM_PROMPT) -> list[dict]:
    sources = format_sources(hits) if hits else "(no sources)"
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question.strip()}\nAnswer in one sentence."}]


def count_prompt_tokens(tokenizer, messages: list[dict]) -> int:
    from rlhfkit.models.generation import encode_prompts

    return len(encode_prompts(tokenizer, [messages])[0])


def prompt_overhead(tokenizer, top_k: int) -> int:
    """Tokens of the prompt besides the chunks' text: instructions, template, source headers,
    and a 64-token allowance for the question (used to size chunks at index time)."""
    return count_prompt_tokens(tokenizer, build_messages("x " * 64, [])) + 24 * top_k


def context_window(config, tokenizer=None) -> int:
    """The most tokens (prompt + answer) the policy takes."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    return 512  # relative-position models (T5) have no hard limit; they were trained on 512


def fit_prompt(tokenizer, question: str, hits: list[Hit], context: int, max_new_tokens: int,
               model_name: str = "the model") -> tuple[list[dict], list[Hit], list[Hit]]:
    """(messages, sources used, sources left out): the best sources that fit with the question
    and `max_new_tokens` in `context` tokens; an error when the question alone does not fit."""
    budget = context - max_new_tokens
    bare = count_prompt_tokens(tokenizer, build_messages(question, []))
    if bare > budget:
        q = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        raise UserError(f"the question is {q} tokens: with the instructions ({bare - q} tokens) and --max-new-tokens "
                        f"{max_new_tokens} it needs {bare + max_new_tokens} tokens, more than {model_name}'s context "
                        f"of {context}; shorten the question or lower --max-new-tokens")
    used: list[Hit] = []
    for i, hit in enumerate(hits):
        if count_prompt_tokens(tokenizer, build_messages(question, used + [hit])) > budget:
            return build_messages(question, used), used, list(hits[i:])
        used.append(hit)
    return build_messages(question, used), used, []


# ---------------------------------------------------------------- answers


def source_json(hit: Hit) -> dict:
    c = hit.chunk
    return {"file": c.path, "chunk": c.position, "doc": c.doc, "title": c.title, "lines": [c.line_start, c.line_end],
            "score": round(hit.score, 4), "text": c.text}


@dataclass
class Answer:
    question: str
    answers: list[str]
    sources: list[Hit]
    left_out: list[Hit] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    model: str = ""
    retrieve_seconds: float = 0.0
    generate_seconds: float = 0.0

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else ""

    def to_json(self) -> dict:
        """`{"answer", "sources"}`; with several sampled answers also `"answers"` (all of them)."""
        out = {"answer": self.answer, "sources": [source_json(h) for h in self.sources]}
        if len(self.answers) > 1:
            out["answers"] = list(self.answers)
        return out

    def completions_row(self) -> dict:
        """A row for `rlhfkit label import` / `label script`: the prompt exactly as the model saw it
        (chat messages with the sources), the sampled answers as completions."""
        return {"prompt": self.messages, "completions": list(self.answers), "model": self.model,
                "question": self.question,
                "sources": [{"file": h.chunk.path, "chunk": h.chunk.position, "score": round(h.score, 4)}
                            for h in self.sources]}

    def to_text(self) -> str:
        lines = []
        for i, a in enumerate(self.answers, 1):
            lines.append(a if len(self.answers) == 1 else f"({i}) {a}")
        lines.append("")
        lines.append("Sources:")
        for i, h in enumerate(self.sources, 1):
            c = h.chunk
            title = f" - {c.title}" if c.title else ""
            lines.append(f"  [{i}] {display_path(c.path)}:{c.line_start} (chunk {c.position}{title}; "
                         f"score {h.score:.2f})")
        if not self.sources:
            lines.append("  (none)")
        return "\n".join(lines)


class Answerer:
    """Answers questions from an index with a policy (an embedded name, hub id, folder or LoRA adapter folder)."""

    def __init__(self, db: str | VectorStore | Retriever, model: str | object = DEFAULT_MODEL,
                 embedder: str | Embedder | None = None, dtype: str = "float32"):
        self.retriever = db if isinstance(db, Retriever) else Retriever(db, embedder)
        if isinstance(model, str):
            from rlhfkit.models import load_policy

            self.model_name = model
            self.policy = load_policy(model, dtype=dtype, verbose=False)
            if hasattr(self.policy.model, "merge_and_unload"):  # a LoRA adapter folder: fold it in, answers
                self.policy.model = self.policy.model.merge_and_unload()  # only need inference
        else:
            self.model_name = getattr(model, "name", "policy")
            self.policy = model
        self.policy.model.eval()
        self.context = context_window(self.policy.model.config, self.policy.tokenizer)

    def ask(self, question: str, top_k: int = 5, n: int = 1, max_new_tokens: int = 128, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = 0, hits: list[Hit] | None = None) -> Answer:
        """Retrieve (unless `hits` are given), fit the prompt, generate `n` answers (greedy when
        `temperature` is 0, which allows only n=1)."""
        if n < 1:
            raise UserError("--n must be at least 1")
        if n > 1 and temperature <= 0:
            raise UserError(f"--n {n} samples several answers: set --temperature above 0 (e.g. 0.7)")
        if max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        t0 = time.perf_counter()
        if hits is None:
            hits = self.retriever.search(question, top_k)
        retrieve_seconds = time.perf_counter() - t0
        messages, used, left_out = fit_prompt(self.policy.tokenizer, question, hits, self.context, max_new_tokens,
                                              self.model_name)
        if left_out:
            _warn(f"{len(left_out)} of {len(hits)} retrieved sources left out: they do not fit {self.model_name}'s "
                  f"context of {self.context} tokens with --max-new-tokens {max_new_tokens}")
        t1 = time.perf_counter()
        answers = generate(self.policy, messages, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=seed)
        return Answer(question=question, answers=answers, sources=used, left_out=left_out, messages=messages,
                      model=self.model_name, retrieve_seconds=retrieve_seconds,
                      generate_seconds=time.perf_counter() - t1)

    def close(self) -> None:
        self.retriever.close()


def generate(policy, messages: list[dict], n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0,
             seed: int | None = 0) -> list[str]:
    import torch

    from rlhfkit.models.generation import GenerationSettings, encode_prompts, pad, sample, strip_response

    tokenizer, model = policy.tokenizer, policy.model
    ids = encode_prompts(tokenizer, [messages])
    if seed is not None:
        torch.manual_seed(seed)
    if temperature > 0:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        responses = sample(model, tokenizer, ids, settings, num_return_sequences=n)
    else:
        device = next(model.parameters()).device
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        input_ids, mask = pad(ids, tokenizer.pad_token_id, side="right" if seq2seq else "left", device=device)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, temperature=None, top_p=None, top_k=None)
        new = out[:, 1:] if seq2seq else out[:, input_ids.shape[1]:]
        responses = [strip_response(row.tolist(), tokenizer.eos_token_id, tokenizer.pad_token_id) for row in new]
    return [t.strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]


def append_completions(path: str | Path, answers: list[Answer]) -> None:
    """Append `Answer.completions_row()`s to a JSONL file (`rlhfkit generate`'s format plus question and sources)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for a in answers:
            f.write(json.dumps(a.completions_row(), ensure_ascii=False) + "\n")
