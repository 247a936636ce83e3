"""`rlhfkit rag eval`: retrieval recall@k and MRR on labelled questions, and answer checks.

QA file (JSONL, one question per row):

    {"question": "How many days of leave ...?", "relevant": ["leave.md"], "answer": ["25 days", "twenty-five"]}

- `question` (text, required);
- `relevant` (required): the documents that answer it, one label or a list. A
  label matches a retrieved chunk when it equals, or is a trailing part (after
  a `/`) of, the chunk's file path or its document name (`FILE#ID` for a JSONL
  row): `leave.md`, `policies/leave.md`, `faq.jsonl#7`, or `faq.jsonl` for any
  row of that file;
- `answer` (optional): one accepted answer or a list; an answer passes when,
  lowercased with punctuation and repeated spaces removed, it contains one of
  them as whole words;
- `id` (optional): shown in reports.

Metrics, over the ranked list of retrieved chunks (a document may fill several
places):

- recall@k: the share of a question's relevant documents that have a chunk among
  the first k, averaged over questions;
- MRR: the mean over questions of 1/rank of the first chunk from a relevant
  document (0 when none is in the retrieved depth, max(k) and at least 10);
- answer accuracy: the share of questions with expected answers whose
  generated answer passes, on the same top-k context `rag ask` would use.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.errors import DataError, UserError


@dataclass(frozen=True)
class QAItem:
    question: str
    relevant: list[str]
    answers: list[str]
    id: str
    row: int


def load_qa(path: str | Path) -> list[QAItem]:
    from rlhfkit.datafiles import read_records

    items = []
    for row, rec in read_records(path):
        q = rec.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataError(path, row, "question", "missing or empty question text")
        rel = rec.get("relevant")
        rel = [rel] if isinstance(rel, str) else rel
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) and r.strip() for r in rel):
            raise DataError(path, row, "relevant", "expected a document label or a non-empty list of them "
                                                   "(file names such as \"leave.md\")")
        ans = rec.get("answer", [])
        ans = [ans] if isinstance(ans, str) else ans
        if not isinstance(ans, list) or not all(isinstance(a, str) and a.strip() for a in ans):
            raise DataError(path, row, "answer", "expected an answer text or a list of accepted answers")
        items.append(QAItem(q.strip(), [r.strip() for r in rel], list(ans), str(rec.get("id", row)), row))
    if not items:
        raise UserError(f"{path}: no questions; a QA file has one {{\"question\", \"relevant\"}} per row")
    return items


# ---------------------------------------------------------------- metrics


def label_matches(label: str, *names: str) -> bool:
    """A label names a document when it equals a name or ends one after a `/`."""
    label = label.strip().rstrip("/")
    return any(n == label or n.endswith("/" + label) for n in names if n)


def _is_relevant(names, label: str) -> bool:
    names = (names,) if isinstance(names, str) else tuple(names)
    return label_matches(label, *names)


def recall_at_k(ranking: list, relevant: list[str], k: int) -> float:
    """Share of `relevant` labels matched within the first `k` entries of `ranking`.

    An entry is a document name, or a tuple of names (a chunk's file path and its document)."""
    if not relevant:
        return 0.0
    top = ranking[:k]
    found = sum(1 for label in relevant if any(_is_relevant(names, label) for names in top))
    return found / len(relevant)


def reciprocal_rank(ranking: list, relevant: list[str]) -> float:
    """1 / (1-based position of the first entry matching any relevant label); 0 if none."""
    for i, names in enumerate(ranking, 1):
        if any(_is_relevant(names, label) for label in relevant):
            return 1.0 / i
    return 0.0


def normalize_answer(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def answer_passes(answer: str, expected: list[str]) -> bool:
    got = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(e)} " in got for e in expected if normalize_answer(e))


# ---------------------------------------------------------------- running


@dataclass
class QAResult:
    item: QAItem
    ranking: list[tuple[str, str]]  # (file, doc) of each retrieved chunk, best first
    recall: dict[int, float]
    rr: float
    answer: str | None = None
    passed: bool | None = None

    def to_json(self) -> dict:
        out = {"id": self.item.id, "question": self.item.question, "relevant": self.item.relevant,
               "retrieved": [doc for _, doc in self.ranking], "rr": round(self.rr, 4),
               **{f"recall@{k}": v for k, v in self.recall.items()}}
        if self.answer is not None:
            out.update(answer=self.answer, expected=self.item.answers, passed=self.passed)
        return out


@dataclass
class EvalReport:
    ks: list[int]
    results: list[QAResult] = field(default_factory=list)
    retrieve_seconds: float = 0.0
    generate_seconds: float = 0.0
    model: str | None = None

    @property
    def recall(self) -> dict[int, float]:
        n = max(len(self.results), 1)
        return {k: sum(r.recall[k] for r in self.results) / n for k in self.ks}

    @property
    def mrr(self) -> float:
        return sum(r.rr for r in self.results) / max(len(self.results), 1)

    @property
    def answered(self) -> list[QAResult]:
        return [r for r in self.results if r.passed is not None]

    @property
    def answer_accuracy(self) -> float | None:
        done = self.answered
        return sum(r.passed for r in done) / len(done) if done else None

    def to_json(self) -> dict:
        out = {"questions": len(self.results), **{f"recall@{k}": round(v, 4) for k, v in self.recall.items()},
               "mrr": round(self.mrr, 4), "retrieve_seconds": round(self.retrieve_seconds, 3)}
        if self.answered:
            out.update(model=self.model, answers_checked=len(self.answered),
                       answer_accuracy=round(self.answer_accuracy, 4), generate_seconds=round(self.generate_seconds, 1))
        return out

    def summary(self) -> str:
        parts = [f"{len(self.results)} questions", *(f"recall@{k} {v:.3f}" for k, v in self.recall.items()),
                 f"MRR {self.mrr:.3f}"]
        text = ", ".join(parts) + f" (retrieval {self.retrieve_seconds:.1f} s)"
        if self.answered:
            passed = sum(r.passed for r in self.answered)
            text += (f"\nanswers ({self.model}): {passed}/{len(self.answered)} contain an expected answer "
                     f"({self.answer_accuracy:.3f}; generation {self.generate_seconds:.1f} s)")
        return text


def evaluate_qa(items: list[QAItem] | str | Path, retriever, ks: list[int] = (1, 3, 5, 10), answerer=None,
                top_k: int = 5, max_new_tokens: int = 64, progress: bool = True) -> EvalReport:
    """Retrieval metrics for every question; with an `Answerer`, answer checks for the
    questions that have expected answers (greedy answers on the top-`top_k` chunks)."""
    from tqdm.auto import tqdm

    if isinstance(items, (str, Path)):
        items = load_qa(items)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise UserError("--k values must be at least 1")
    depth = max(ks[-1], 10, top_k)
    report = EvalReport(ks=ks, model=getattr(answerer, "model_name", None))
    for item in tqdm(items, desc="evaluating", unit="question", disable=not progress):
        t = time.perf_counter()
        hits = retriever.search(item.question, depth)
        report.retrieve_seconds += time.perf_counter() - t
        ranking = [(h.chunk.path, h.chunk.doc) for h in hits]
        result = QAResult(item, ranking, {k: recall_at_k(ranking, item.relevant, k) for k in ks},
                          reciprocal_rank(ranking, item.relevant))
        if answerer is not None and item.answers:
            t = time.perf_counter()
            answer = answerer.ask(item.question, hits=hits[:top_k], max_new_tokens=max_new_tokens)
            report.generate_seconds += time.perf_counter() - t
            result.answer, result.passed = answer.answer, answer_passes(answer.answer, item.answers)
        report.results.append(result)
    return report
