"""Import and export through the `rlhfkit label` commands, checked against hand-worked rows."""

import json
from datetime import timedelta

import pytest

from rlhfkit import data
from rlhfkit.datafiles import write_jsonl
from rlhfkit.feedback.cli import main
from rlhfkit.feedback.schema import Annotator
from rlhfkit.feedback.store import Store, Who

CHAT = [{"role": "user", "content": "B?"}]
GENERATED = [
    {"prompt": "A", "completions": ["a1", "a2", "a3"], "model": "tiny"},
    {"messages": CHAT, "completions": ["b1", "b2"]},
    {"prompt": "C", "completions": ["c1", "c2"]},
]
# (annotator, prompt) -> action and, for rankings, groups of completion texts best first.
LABELS = {
    ("ann", "A"): ("rank", [["a2"], ["a1"], ["a3"]]),
    ("bob", "A"): ("rank", [["a1", "a2"], ["a3"]]),  # a tie in first place
    ("ann", "B?"): ("rank", [["b1"], ["b2"]]),
    ("bob", "B?"): ("all_bad", None),
    ("ann", "C"): ("skip", None),
    ("bob", "C"): ("rank", [["c2"], ["c1"]]),
}


@pytest.fixture
def labelled(tmp_path, db_url):
    gen = tmp_path / "gen.jsonl"
    write_jsonl(gen, GENERATED)
    assert main(["import", str(gen), "--db", db_url]) == 0
    assert main(["import", str(gen), "--db", db_url]) == 0  # again: nothing added
    store = Store(db_url)
    for name in ("ann", "bob"):
        store.add_annotator(name)
        with store.session() as s:
            a = s.query(Annotator).filter_by(name=name).one()
            who = Who(a.id, a.name, a.role)
        while (item := store.next_item(who, 2, timedelta(hours=1))) is not None:
            action, groups = LABELS[(name, data.prompt_text(item["prompt"]))]
            ids = {c["text"]: c["id"] for c in item["completions"]}
            store.submit(who, item["id"], action, groups and [[ids[t] for t in g] for g in groups])
    store.close()
    return db_url


def test_export_pairs_hand_worked(labelled, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["export", "--db", labelled, "--format", "pairs", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = sorted((r["annotator"], data.prompt_text(r["prompt"]), r["chosen"], r["rejected"]) for r in rows)
    assert got == sorted([
        ("ann", "A", "a2", "a1"), ("ann", "A", "a2", "a3"), ("ann", "A", "a1", "a3"),
        ("bob", "A", "a1", "a3"), ("bob", "A", "a2", "a3"),  # the a1 = a2 tie gives no pair
        ("ann", "B?", "b1", "b2"),                           # bob's all-bad gives none
        ("bob", "C", "c2", "c1"),                            # ann's skip gives none
    ])
    assert [p.prompt for p in data.load_preferences(out)].count(CHAT) == 1  # chat prompt kept as messages
    summary = json.loads((tmp_path / "pairs.summary.json").read_text())
    # Pair judgments both annotators made (C: only bob ranked it):
    #   A(a1,a2): ann ">", bob "="   A(a1,a3): "<","<"   A(a2,a3): "<","<"   B(b1,b2): ann "<", bob "="
    # p_o = 2/4; ann {<:3, >:1}, bob {<:2, =:2}: p_e = 3*2/16 = 3/8; kappa = (1/2 - 3/8)/(5/8) = 0.2
    # alpha (nominal): n_< = 5, n_> = 1, n_= = 2, n = 8; D_o = 4/8;
    #   D_e = 2(5*1 + 5*2 + 1*2)/(8*7) = 34/56; alpha = 1 - (1/2)/(34/56) = 3/17
    agreement = summary["agreement"]
    assert agreement["annotators"] == 2 and agreement["pair_units"] == 4
    assert agreement["cohen_kappa"] == pytest.approx(0.2)
    assert agreement["krippendorff_alpha_nominal"] == pytest.approx(3 / 17)
    assert summary["labels"] == {"rank": 4, "all_bad": 1, "skip": 1} and summary["rows"] == 7
    assert "agreement" in capsys.readouterr().out


def test_export_rankings_and_raw(labelled, tmp_path):
    out = tmp_path / "rankings.jsonl"
    assert main(["export", "--db", labelled, "--format", "rankings", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(r["annotator"], data.prompt_text(r["prompt"])): (r["label"], r["ranks"]) for r in rows}
    assert got == {
        ("ann", "A"): ("rank", [2, 1, 3]), ("bob", "A"): ("rank", [1, 1, 2]),
        ("ann", "B?"): ("rank", [1, 2]), ("bob", "B?"): ("all_bad", [1, 1]),
        ("bob", "C"): ("rank", [2, 1]),
    }
    imported = {g.get("prompt", "B?"): g["completions"] for g in GENERATED}
    assert all(r["completions"] == imported[data.prompt_text(r["prompt"])] for r in rows)  # imported order
    assert len(data.load_rankings(out)) == 5
    assert len(data.load_preferences(out)) == 7  # the rankings file expands to the same pairs
    raw = [json.loads(line) for line in (tmp_path / "rankings.raw.jsonl").read_text().splitlines()]
    assert sorted((r["annotator"], r["label"]) for r in raw) == sorted((a, act) for (a, _), (act, _) in LABELS.items())
    assert all(r["created_at"].endswith("Z") for r in raw)
    assert any(r["meta"] == {"model": "tiny"} for r in raw)


def test_stats_and_add_annotator_commands(labelled, capsys):
    assert main(["stats", "--db", labelled, "--per-item", "2"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 3 and stats["items_complete"] == 2  # C has one real label (ann skipped)
    assert main(["add-annotator", "carol", "--db", labelled, "--url", "http://x:1/"]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    assert link.startswith("http://x:1/login#") and len(link) > len("http://x:1/login#") + 30


@pytest.mark.parametrize("row, problem", [
    ({"prompt": "p", "completions": ["only one"]}, "at least 2 completions"),
    ({"prompt": "p", "completions": ["a", ""]}, "empty text"),
    ({"completions": ["a", "b"]}, "missing column"),
    ({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2]}, "already ranked"),
])
def test_bad_import_is_a_one_line_user_error(tmp_path, sqlite_url, capsys, row, problem):
    gen = tmp_path / "gen.jsonl"
    write_jsonl(gen, [{"prompt": "ok", "completions": ["x", "y"]}, row])
    assert main(["import", str(gen), "--db", sqlite_url]) == 2
    err = capsys.readouterr().err
    assert problem in err and "row 2" in err and len(err.strip().splitlines()) == 1


def test_register_fits_the_main_cli_label_group():
    import argparse

    from rlhfkit.feedback.cli import register

    parser = argparse.ArgumentParser(prog="rlhfkit")
    label = parser.add_subparsers(dest="command").add_parser("label")
    register(label.add_subparsers(dest="label_command"))
    for argv in (["serve", "--port", "9"], ["import", "x.jsonl"], ["add-annotator", "a", "--admin"],
                 ["export", "--format", "pairs", "--out", "o.jsonl"], ["stats"]):
        args = parser.parse_args(["label", *argv])
        assert callable(args.func) and args.db == "sqlite:///feedback.db", argv


def _link_token(out: str) -> str:
    return out.strip().splitlines()[-1].rsplit("#", 1)[1]


def test_add_annotator_new_token_sets_the_role_it_prints(db_url, capsys):
    assert main(["add-annotator", "lee", "--db", db_url]) == 0
    first = _link_token(capsys.readouterr().out)
    assert main(["add-annotator", "lee", "--admin", "--new-token", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("admin lee:")
    store = Store(db_url)
    try:
        assert store.authenticate(first) is None
        assert store.authenticate(_link_token(out)).role == "admin"
        # A new link alone keeps the role; --annotator makes the account an annotator again.
        assert main(["add-annotator", "lee", "--new-token", "--db", db_url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("admin lee:") and store.authenticate(_link_token(out)).role == "admin"
        assert main(["add-annotator", "lee", "--annotator", "--new-token", "--db", db_url]) == 0
        out = capsys.readouterr().out
        assert out.startswith("annotator lee:") and store.authenticate(_link_token(out)).role == "annotator"
    finally:
        store.close()
    assert main(["add-annotator", "lee", "--admin", "--db", db_url]) == 2  # an existing name needs --new-token
    assert "--new-token" in capsys.readouterr().err


@pytest.mark.parametrize("kill_at", ["out", "raw", "summary"])
def test_an_export_killed_midway_leaves_the_previous_files_whole(labelled, tmp_path, kill_at):
    """SIGKILL (no cleanup) while the export writes: the files of the last export stay as they were."""
    import signal
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "pairs.jsonl"
    assert main(["export", "--db", labelled, "--format", "pairs", "--out", str(out)]) == 0
    names = ("pairs.jsonl", "pairs.raw.jsonl", "pairs.summary.json")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    n_out, n_raw = len(before["pairs.jsonl"].splitlines()), len(before["pairs.raw.jsonl"].splitlines())
    nth = {"out": 3, "raw": n_out + 3, "summary": n_out + n_raw + 1}[kill_at]  # which json.dumps call dies
    script = textwrap.dedent(f"""
        import json, os, signal
        from rlhfkit.feedback.cli import main
        real, calls = json.dumps, [0]
        def dumps(*args, **kwargs):
            calls[0] += 1
            if calls[0] == {nth}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        json.dumps = dumps
        main(["export", "--db", {labelled!r}, "--format", "pairs", "--out", {str(out)!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert len(data.load_preferences(out)) == 7
    # The next export goes through, and leaves nothing of its own behind.
    assert main(["export", "--db", labelled, "--format", "pairs", "--out", str(out)]) == 0
    assert {n: (tmp_path / n).read_bytes() for n in names}["pairs.jsonl"] == before["pairs.jsonl"]


def test_an_export_that_fails_leaves_no_temporary_files(labelled, tmp_path, monkeypatch):
    from rlhfkit.feedback import export as export_module

    out = tmp_path / "sub" / "pairs.jsonl"
    calls = [0]
    real = json.dumps

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 9:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    store = Store(labelled)
    monkeypatch.setattr(export_module.json, "dumps", failing)
    try:
        with pytest.raises(OSError):
            export_module.export(store, "pairs", out)
    finally:
        store.close()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
