"""Odd input files for `rlhfkit label import`: one clear line naming the row, on both databases."""

import json
from datetime import timedelta

import pytest

from rlhfkit import data
from rlhfkit.datafiles import write_jsonl
from rlhfkit.feedback.cli import main
from rlhfkit.feedback.store import Store

ZWSP = "\u200b"


def import_(path, db_url, capsys):
    code = main(["import", str(path), "--db", db_url])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err):
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_latin1_jsonl_names_the_row_and_the_encoding(tmp_path, db_url, capsys):
    path = tmp_path / "gen.jsonl"
    good = json.dumps({"prompt": "ok", "completions": ["x", "y"]}, ensure_ascii=False)
    bad = json.dumps({"prompt": "café", "completions": ["crème", "brûlée"]}, ensure_ascii=False)
    path.write_bytes((good + "\n" + bad + "\n").encode("latin-1"))
    code, _, err = import_(path, db_url, capsys)
    assert code == 2
    assert "row 2" in one_line(err) and "UTF-8" in err and "0xe9" in err and "iconv" in err


def test_latin1_csv_names_the_data_row_and_column(tmp_path, db_url, capsys):
    path = tmp_path / "gen.csv"
    path.write_bytes('prompt,completions\nok,"[""x"", ""y""]"\nna\xefve,"[""a"", ""b""]"\n'.encode("latin-1"))
    code, _, err = import_(path, db_url, capsys)
    assert code == 2 and "row 2" in one_line(err) and "column 'prompt'" in err and "UTF-8" in err


def test_utf8_with_a_byte_order_mark_is_fine(tmp_path, db_url, capsys):
    path = tmp_path / "gen.csv"
    path.write_bytes('\ufeffprompt,completions\nok,"[""x"", ""y""]"\n'.encode("utf-8"))
    code, out, err = import_(path, db_url, capsys)
    assert code == 0, err
    assert "imported 1 items" in out


@pytest.mark.parametrize("where", ["completion", "prompt", "message"])
def test_a_nul_character_is_refused_with_its_row_on_both_databases(tmp_path, db_url, capsys, where):
    row = {"prompt": "p", "completions": ["fine", "bro\x00ken"]}
    if where == "prompt":
        row = {"prompt": "bad\x00prompt", "completions": ["a", "b"]}
    elif where == "message":
        row = {"messages": [{"role": "user", "content": "hi\x00"}], "completions": ["a", "b"]}
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, [{"prompt": "ok", "completions": ["x", "y"]}, row])
    code, _, err = import_(path, db_url, capsys)
    assert code == 2 and "row 2" in one_line(err) and "NUL" in err
    store = Store(db_url)
    try:
        assert store.counts(1)["items"] == 0  # nothing imported: the file is checked before any write
    finally:
        store.close()


@pytest.mark.parametrize("text", [ZWSP, ZWSP * 3, f" {ZWSP}\u2060\ufeff ", "\u200d\u200c"])
def test_a_completion_of_only_invisible_characters_is_empty(tmp_path, db_url, capsys, text):
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, [{"prompt": "p", "completions": ["visible", text]}])
    code, _, err = import_(path, db_url, capsys)
    assert code == 2 and "row 1" in one_line(err) and "completions[1]" in err and "empty text" in err


def test_identical_completions_are_merged_and_said(tmp_path, db_url, capsys):
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, [
        {"prompt": "p1", "completions": ["same", "other", "same", f"same{ZWSP} "]},  # three look the same
        {"prompt": "p2", "completions": ["a", "b"]},
    ])
    code, out, err = import_(path, db_url, capsys)
    assert code == 0, err
    assert "imported 2 items" in out
    assert "row 1" in out and "2 duplicate completions" in out
    store = Store(db_url)
    try:
        rows = {r[0]: r[1] for r in ((lab[0], lab[1]) for lab in _items(store))}
        assert rows == {"p1": ["same", "other"], "p2": ["a", "b"]}
        # Labelled and exported, the pairs load for `rlhfkit reward`: no pair compares a text with itself.
        who = store.authenticate(store.add_annotator("ann"))
        while (item := store.next_item(who, 1, timedelta(hours=1))) is not None:
            store.submit(who, item["id"], "rank", [[c["id"]] for c in item["completions"]])
    finally:
        store.close()
    out_path = tmp_path / "pairs.jsonl"
    assert main(["export", "--db", db_url, "--format", "pairs", "--out", str(out_path)]) == 0
    assert len(data.load_preferences(out_path)) == 2


def test_a_row_whose_completions_are_all_identical_is_refused(tmp_path, db_url, capsys):
    path = tmp_path / "gen.jsonl"
    write_jsonl(path, [{"prompt": "p", "completions": ["a", "b"]},
                            {"prompt": "q", "completions": ["Yes.", " Yes.", "Yes." + ZWSP]}])
    code, _, err = import_(path, db_url, capsys)
    assert code == 2 and "row 2" in one_line(err) and "identical" in err


def test_other_loaders_share_the_checks(tmp_path):
    """The same validation serves the prompt, rankings and preference loaders."""
    from rlhfkit.errors import DataError

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": "ok"}, {"prompt": ZWSP}])
    with pytest.raises(DataError, match="row 2.*empty text"):
        data.load_prompts(prompts)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                      b'{"prompt": "p\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError, match="row 2.*not UTF-8"):
        data.load_preferences(prefs)
    rankings = tmp_path / "rankings.json"
    rankings.write_text('[{"prompt": "p", "completions": ["a", "b\\u0000"], "ranks": [1, 2]}]')
    with pytest.raises(DataError, match="row 1.*NUL"):
        data.load_rankings(rankings)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "p"},\n  {"prompt": ]')
    with pytest.raises(DataError, match="unparsable JSON.*line 2"):
        data.load_prompts(broken)


def _items(store):
    with store.read() as s:
        from rlhfkit.feedback.schema import Item

        return [(i.prompt, [c.text for c in i.completions]) for i in s.query(Item).order_by(Item.id)]
