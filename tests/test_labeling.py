"""The scripted labeler: ranks by a reward source, ties, noise, empty/identical completions, the CLI group."""

import json

import pytest

from rlhfkit.cli import build_parser, main
from rlhfkit.data import load_preferences, load_rankings
from rlhfkit.errors import DataError, UserError
from rlhfkit.labeling import rank_scores, script_label


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def length(prompts, completions):
    return [len(c) for c in completions]


def test_rank_scores_dense_with_ties():
    assert rank_scores([0.1, 0.9, 0.5]) == [3, 1, 2]
    assert rank_scores([1.0, 1.0, 0.0]) == [1, 1, 2]
    assert rank_scores([0.50, 0.52, 0.10, 0.49], tie_threshold=0.02) == [1, 1, 2, 1]
    assert rank_scores([3.0]) == [1]


def test_script_label_ranks_by_source_and_writes_valid_rankings(tmp_path):
    rows = [(1, "p1", ["aa", "a", "aaaa"]), (2, [{"role": "user", "content": "p2"}], ["b", "bbb"])]
    records, stats = script_label(rows, length)
    assert records[0]["ranks"] == [2, 3, 1] and records[0]["scores"] == [2.0, 1.0, 4.0]
    assert records[1]["messages"] == [{"role": "user", "content": "p2"}] and records[1]["ranks"] == [2, 1]
    assert stats["pairs"] == 3 + 1 and stats["rows"] == 2
    path = tmp_path / "rankings.jsonl"
    write_jsonl(path, records)
    assert len(load_rankings(path)) == 2
    pairs = load_preferences(path)
    assert pairs[0].chosen == "aaaa" and pairs[0].rejected == "aa" and len(pairs) == 4


def test_lower_is_better_source_ranks_least_first():
    records, _ = script_label([(1, "p", ["you stupid idiot", "thank you, lovely day"])], "toxicity")
    assert records[0]["ranks"] == [2, 1]
    assert records[0]["scores"][0] > records[0]["scores"][1]  # scores shown as the source gives them


def test_empty_and_identical_completions():
    rows = [(1, "p", ["same", "", "same ", "longer one"]), (2, "q", ["only", "  "]), (3, "r", ["x", "x"])]
    records, stats = script_label(rows, length)
    assert len(records) == 1 and stats["skipped_rows"] == [2, 3] and stats["empty_completions"] == 2
    r = records[0]
    assert r["completions"] == ["same", "same ", "longer one"] and r["ranks"] == [2, 2, 1]
    assert stats["pairs"] == 2
    with pytest.raises(UserError, match="no row has two different"):
        script_label([(1, "p", ["x", ""])], length)


def test_noise_is_seeded_and_flips_some_orders():
    rows = [(i, f"p{i}", ["a" * (i % 7 + 1), "b" * (i % 5 + 2), "c" * 4]) for i in range(60)]
    exact, _ = script_label(rows, length)
    noisy1, _ = script_label(rows, length, noise=1.0, seed=3)
    noisy2, _ = script_label(rows, length, noise=1.0, seed=3)
    assert [r["ranks"] for r in noisy1] == [r["ranks"] for r in noisy2]
    assert [r["ranks"] for r in noisy1] != [r["ranks"] for r in exact]
    assert [r["scores"] for r in noisy1] == [r["scores"] for r in exact]  # noise changes ranks, not reported scores


def test_cli_label_script(tmp_path, capsys):
    src = write_jsonl(tmp_path / "completions.jsonl", [
        {"prompt": "Reply to my neighbour.", "completions": ["You stupid idiot, shut up.", "Thank you, have a lovely day.", ""],
         "model": "tiny-gpt2"},
        {"messages": [{"role": "user", "content": "Say hi."}], "completions": ["Hi, nice to meet you!", "Go to hell, moron."]},
    ])
    out = tmp_path / "rankings.jsonl"
    assert main(["label", "script", "--by", "profanity", "--in", src, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ranked 2 prompts by profanity" in printed and "2 preference pairs" in printed
    assert "1 empty completions left out" in printed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["ranks"] == [2, 1] and rows[1]["ranks"] == [1, 2] and rows[0]["labeler"] == "script:profanity"
    assert [p.chosen for p in load_preferences(out)] == ["Thank you, have a lovely day.", "Hi, nice to meet you!"]


def test_cli_label_script_bad_input(tmp_path, capsys):
    src = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "completions": ["a", "b"]}, {"prompt": "q"}])
    assert main(["label", "script", "--in", src, "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "row 2: column 'completions': missing column" in capsys.readouterr().err
    assert main(["label", "script", "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "pass --in" in capsys.readouterr().err
    with pytest.raises(DataError):
        from rlhfkit.labeling import _read_completion_rows

        _read_completion_rows(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completions": "not a list"}]))


def test_label_group_has_script_and_feedback_commands():
    parser = build_parser()
    label = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "label")[1]
    commands = set(label._subparsers._group_actions[0].choices)
    assert "script" in commands
    try:
        import rlhfkit.feedback.cli  # noqa: F401
    except ModuleNotFoundError:
        return
    assert {"serve", "import", "export"} <= commands
