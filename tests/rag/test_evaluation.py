"""Eval metrics against hand-worked rankings, answer checks, the QA file format."""

from __future__ import annotations

import json

import pytest

from rlhfkit.errors import DataError
from rlhfkit.rag.evaluation import (EvalReport, QAItem, QAResult, answer_passes, evaluate_qa, label_matches, load_qa,
                                    recall_at_k, reciprocal_rank)


def test_recall_and_rr_by_hand():
    ranking = ["a.md", "b.md", "a.md", "c.md"]  # a document may fill several places
    # one relevant document, first seen at rank 4
    assert [recall_at_k(ranking, ["c.md"], k) for k in (1, 3, 4, 10)] == [0, 0, 1, 1]
    assert reciprocal_rank(ranking, ["c.md"]) == pytest.approx(1 / 4)
    # two relevant documents: a at rank 1, c at rank 4
    assert [recall_at_k(ranking, ["a.md", "c.md"], k) for k in (1, 3, 4)] == [0.5, 0.5, 1.0]
    assert reciprocal_rank(ranking, ["c.md", "a.md"]) == 1.0
    # the second place
    assert reciprocal_rank(ranking, ["b.md"]) == 0.5
    # never retrieved
    assert recall_at_k(ranking, ["d.md", "b.md"], 2) == 0.5
    assert reciprocal_rank(ranking, ["d.md"]) == 0.0


def test_labels_match_whole_trailing_path_parts():
    names = ("/x/docs/faq.jsonl", "/x/docs/faq.jsonl#wifi")
    assert label_matches("faq.jsonl#wifi", *names)
    assert label_matches("docs/faq.jsonl", *names)  # any row of the file
    assert label_matches("/x/docs/faq.jsonl", *names)
    assert not label_matches("aq.jsonl", *names)  # not a whole path part
    assert not label_matches("wifi", *names)
    assert not label_matches("faq.jsonl#wi", *names)
    assert recall_at_k([names], ["faq.jsonl#wifi"], 1) == 1.0


def test_mean_over_questions_by_hand():
    item = QAItem("q", ["a"], [], "1", 1)
    report = EvalReport(ks=[1, 3])
    # rr: 1, 1/2, 0; recall@1: 1, 0, 0; recall@3: 1, 1, 0
    for rr, r1, r3 in [(1.0, 1.0, 1.0), (0.5, 0.0, 1.0), (0.0, 0.0, 0.0)]:
        report.results.append(QAResult(item, [], {1: r1, 3: r3}, rr))
    assert report.mrr == pytest.approx(0.5)
    assert report.recall == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    assert report.answer_accuracy is None


@pytest.mark.parametrize("answer, expected, passes", [
    ("The cap is 2,600 kroner a night.", ["2,600"], True),
    ("The cap is 2600 kroner.", ["2,600", "2600"], True),
    ("It is 26000.", ["2600"], False),  # whole words only
    ("Not allowed.", ["no"], False),
    ("No, never.", ["no"], True),
    ("Ask ERIK NORDAHL!", ["Erik Nordahl"], True),
    ("anything", [], False),
])
def test_answer_checks(answer, expected, passes):
    assert answer_passes(answer, expected) is passes


def test_evaluate_with_a_fixed_retriever_and_answerer(tmp_path):
    from rlhfkit.rag.stores import Hit, StoredChunk

    def hit(path, score):
        return Hit(StoredChunk(path, path, 0, None, "t", 1, 1), score)

    rankings = {"q1": [hit("/d/a.md", .9), hit("/d/b.md", .8)], "q2": [hit("/d/b.md", .9), hit("/d/c.md", .5),
                                                                       hit("/d/a.md", .4)]}

    class Retriever:
        def search(self, question, k):
            return rankings[question][:k]

    class Answerer:
        model_name = "fake"

        def ask(self, question, hits, max_new_tokens):
            class A:
                answer = "It is a." if question == "q1" else "No idea."
            assert hits == rankings[question][:2]
            return A()

    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "q1", "relevant": "a.md", "answer": "a"}) + "\n" +
                  json.dumps({"question": "q2", "relevant": ["a.md", "c.md"], "answer": ["c"], "id": "two"}) + "\n")
    report = evaluate_qa(qa, Retriever(), ks=[1, 2], answerer=Answerer(), top_k=2, progress=False)
    # q1: a at 1 -> recall@1 1, recall@2 1, rr 1; q2: c at 2, a at 3 -> recall@1 0, recall@2 0.5, rr 1/2
    assert report.recall == {1: 0.5, 2: 0.75}
    assert report.mrr == pytest.approx(0.75)
    assert report.answer_accuracy == 0.5
    row = report.results[1].to_json()
    assert row["id"] == "two" and row["retrieved"] == ["/d/b.md", "/d/c.md", "/d/a.md"] and row["passed"] is False
    assert json.loads(json.dumps(report.to_json()))["answer_accuracy"] == 0.5


@pytest.mark.parametrize("row, column", [
    ({"relevant": ["a.md"]}, "question"),
    ({"question": "q", "relevant": []}, "relevant"),
    ({"question": "q"}, "relevant"),
    ({"question": "q", "relevant": "a.md", "answer": 3}, "answer"),
])
def test_bad_qa_rows_name_file_row_and_column(tmp_path, row, column):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "fine", "relevant": "x.md"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_qa(qa)
    assert (e.value.row, e.value.column) == (2, column) and str(qa) in str(e.value)


def test_the_shipped_qa_set_is_well_formed():
    from rlhfkit.rag import SAMPLE_DOCS, SAMPLE_QA

    items = load_qa(SAMPLE_QA)
    assert len(items) >= 50 and all(i.answers for i in items)
    files = {p.name for p in SAMPLE_DOCS.iterdir()}
    for item in items:
        for label in item.relevant:
            assert label.split("#")[0] in files, label


@pytest.mark.slow
def test_recall_at_5_on_the_shipped_set(tmp_path, embedder):
    """The figure docs/rag.md quotes: recall@5 >= 0.9 with MiniLM on the handbook."""
    from rlhfkit.rag import SAMPLE_DOCS, SAMPLE_QA
    from rlhfkit.rag.answering import Retriever
    from rlhfkit.rag.indexing import index_documents

    url = f"sqlite:///{tmp_path / 'sample.db'}"
    index_documents([str(SAMPLE_DOCS)], url, embedder=embedder, progress=False)
    retriever = Retriever(url, embedder)
    report = evaluate_qa(SAMPLE_QA, retriever, ks=[1, 5], progress=False)
    retriever.close()
    assert report.recall[5] >= 0.9 and report.mrr >= 0.8
