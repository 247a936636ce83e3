"""The `rlhfkit rag` command contract: --json shape, export rows, summaries, errors and their messages."""

from __future__ import annotations

import json

import pytest

from rlhfkit.cli import main


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A small index built through the CLI (MiniLM, sized for tiny-gpt2's 512-token context)."""
    root = tmp_path_factory.mktemp("rag")
    docs = root / "docs"
    docs.mkdir()
    (docs / "hotels.md").write_text("# Travel\n\n## Hotels\n\nHotel nights are capped at 1,800 kroner.\n")
    (docs / "canteen.txt").write_text("The canteen serves lunch from 11:00 to 13:00.\n")
    (docs / "faq.jsonl").write_text('{"id": "wifi", "text": "Visitors use the wifi network HMI-Guest."}\n')
    url = f"sqlite:///{root / 'rag.db'}"
    assert main(["rag", "index", "--docs", str(docs), "--db", url, "--model", "tiny-gpt2", "--top-k", "2",
                 "--max-new-tokens", "16", "--no-progress"]) == 0
    return url, docs


def test_index_prints_one_summary_line(index, capsys):
    url, docs = index
    assert main(["rag", "index", "--docs", str(docs), "--db", url, "--model", "tiny-gpt2", "--top-k", "2",
                 "--max-new-tokens", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("rlhfkit rag index: 3 files: 0 new, 0 changed, 3 unchanged")
    assert "holds 3 chunks from 3 files" in out[0]


def test_ask_json_is_one_object_with_answer_and_sources(index, capsys):
    url, docs = index
    rc = main(["rag", "ask", "What do hotel nights cost?", "--db", url, "--model", "tiny-gpt2", "--json",
               "--top-k", "2", "--max-new-tokens", "8"])
    assert rc == 0
    out = capsys.readouterr().out
    obj = json.loads(out)  # the whole of stdout is one JSON object
    assert set(obj) == {"answer", "sources"} and isinstance(obj["answer"], str)
    assert len(obj["sources"]) == 2
    first = obj["sources"][0]
    assert first["file"] == str(docs / "hotels.md") and first["chunk"] == 0
    assert {"file", "chunk", "doc", "title", "lines", "score", "text"} <= set(first)
    assert first["title"] == "Travel > Hotels" and "1,800" in first["text"]


def test_ask_text_names_the_sources(index, capsys):
    url, _ = index
    assert main(["rag", "ask", "Which wifi do visitors use?", "--db", url, "--model", "tiny-gpt2", "--top-k", "1",
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "Sources:\n  [1] " in out and "faq.jsonl:1 (chunk 0; score" in out


def test_export_appends_rows_the_ranking_app_reads(index, tmp_path, capsys):
    from rlhfkit.data import load_completions

    url, _ = index
    out = tmp_path / "rag_completions.jsonl"
    args = ["rag", "ask", "When is lunch?", "--db", url, "--model", "tiny-gpt2", "--n", "3", "--temperature", "0.9",
            "--max-new-tokens", "6", "--export", str(out), "--json"]
    assert main(args) == 0
    obj = json.loads(capsys.readouterr().out)
    assert set(obj) == {"answer", "sources", "answers"} and len(obj["answers"]) == 3
    assert main(args) == 0  # appends
    rows = load_completions(out)  # what `rlhfkit label import` / `label script` read
    assert len(rows) == 2
    _, prompt, completions, extra = rows[0]
    assert len(completions) == 3 and prompt[0]["role"] == "system" and "When is lunch?" in prompt[-1]["content"]
    assert "11:00" in prompt[-1]["content"]  # the retrieved context is part of the prompt that gets ranked
    assert extra["question"] == "When is lunch?" and extra["model"] == "tiny-gpt2"
    assert extra["sources"][0]["file"].endswith("canteen.txt")


def test_questions_file_gives_one_json_line_each(index, tmp_path, capsys):
    url, _ = index
    qs = tmp_path / "qs.jsonl"
    qs.write_text('{"question": "lunch?"}\n{"prompt": "wifi?"}\n')
    assert main(["rag", "ask", "--questions", str(qs), "--db", url, "--model", "tiny-gpt2", "--json",
                 "--max-new-tokens", "4", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [set(json.loads(x)) for x in lines] == [{"answer", "sources"}] * 2


@pytest.mark.parametrize("extra, message", [
    (["--n", "2"], "--n 2 samples several answers: set --temperature above 0"),
    (["--embedder", "tiny-bert"], "built with embedding model 'minilm-l6' (384-dim)"),
    (["--max-new-tokens", "600"], "more than tiny-gpt2's context of 512; shorten the question or lower --max-new-tokens"),
])
def test_ask_errors_are_one_line_with_the_fix(index, capsys, extra, message):
    url, _ = index
    assert main(["rag", "ask", "lunch?", "--db", url, "--model", "tiny-gpt2", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("rlhfkit rag: error: ") and "Traceback" not in err


def test_a_question_longer_than_the_context_is_refused(index, capsys):
    url, _ = index
    question = "Please tell me about lunch " * 200
    assert main(["rag", "ask", question, "--db", url, "--model", "tiny-gpt2", "--max-new-tokens", "8"]) == 2
    err = capsys.readouterr().err
    assert "the question is" in err and "more than tiny-gpt2's context of 512" in err
    # the query encoder's limit is a warning: it reads the first 254 tokens to search
    assert "reads only its first 254" in err


def test_sources_that_do_not_fit_are_left_out_with_a_warning(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_text(" ".join(f"Lunch fact {i}.{j} is here." for j in range(40)))
    url = f"sqlite:///{tmp_path / 'big.db'}"
    assert main(["rag", "index", "--docs", str(docs), "--db", url, "--model", "none", "--no-progress"]) == 0
    assert main(["rag", "ask", "lunch fact?", "--db", url, "--model", "tiny-gpt2", "--top-k", "6",
                 "--max-new-tokens", "8", "--json"]) == 0
    captured = capsys.readouterr()
    used = json.loads(captured.out.strip().splitlines()[-1])["sources"]
    assert 0 < len(used) < 6
    assert f"{6 - len(used)} of 6 retrieved sources left out: they do not fit tiny-gpt2's context of 512" in captured.err


def test_ask_on_an_empty_index(tmp_path, capsys):
    assert main(["rag", "ask", "hi?", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--model", "tiny-gpt2"]) == 2
    assert "is empty; build it with `rlhfkit rag index --docs FOLDER" in capsys.readouterr().err


def test_index_needs_docs(capsys):
    assert main(["rag", "index"]) == 2
    assert "--docs is required" in capsys.readouterr().err


def test_eval_json_and_per_question_file(index, tmp_path, capsys):
    url, _ = index
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "When is lunch served?", "relevant": "canteen.txt", "answer": "11:00"}\n'
                  '{"question": "Guest wifi name?", "relevant": ["faq.jsonl#wifi"]}\n')
    per_question = tmp_path / "per_q.jsonl"
    assert main(["rag", "eval", "--qa", str(qa), "--db", url, "--model", "tiny-gpt2", "--k", "1", "3",
                 "--max-new-tokens", "4", "--json", "--out", str(per_question)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["questions"] == 2 and summary["recall@1"] == 1.0 and summary["mrr"] == 1.0
    assert summary["answers_checked"] == 1 and summary["model"] == "tiny-gpt2"
    rows = [json.loads(x) for x in per_question.read_text().splitlines()]
    assert rows[0]["retrieved"][0].endswith("canteen.txt") and "passed" in rows[0] and "passed" not in rows[1]


def test_eval_text_lists_misses(index, tmp_path, capsys):
    url, _ = index
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"id": "m", "question": "Guest wifi name?", "relevant": "hotels.md"}\n')
    assert main(["rag", "eval", "--qa", str(qa), "--db", url, "--k", "1", "--no-answers"]) == 0
    out = capsys.readouterr().out
    assert "1 questions, recall@1 0.000, MRR 0.500" in out and "missed@1 [m]" in out


@pytest.mark.slow
def test_smollm2_answers_from_the_shipped_handbook(tmp_path, capsys):
    """End to end on the real policy: index the shipped corpus, ask, get the fact and its source."""
    from rlhfkit.rag import SAMPLE_DOCS

    url = f"sqlite:///{tmp_path / 'handbook.db'}"
    assert main(["rag", "index", "--docs", str(SAMPLE_DOCS), "--db", url, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["rag", "ask", "What is the minimum length of a password?", "--db", url, "--json",
                 "--max-new-tokens", "32"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["sources"][0]["file"].endswith("it-accounts.md")
    assert "14" in obj["answer"]
