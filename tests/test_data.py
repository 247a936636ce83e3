import json

import pytest

from rlhfkit.data import (
    Preference,
    load_preferences,
    load_prompts,
    load_rankings,
    prompt_text,
    rankings_to_pairs,
)
from rlhfkit.errors import DataError, UserError

# ---------------------------------------------------------------- rankings to pairs


def test_ranks_2_1_3_give_three_pairs_in_preference_order():
    # b is best (1), a second (2), c last (3): b>a, b>c, a>c.
    assert rankings_to_pairs(["a", "b", "c"], [2, 1, 3]) == [("b", "a"), ("b", "c"), ("a", "c")]


def test_full_order_of_four_gives_six_pairs():
    pairs = rankings_to_pairs(["w", "x", "y", "z"], [4, 3, 2, 1])
    assert pairs == [("z", "y"), ("z", "x"), ("z", "w"), ("y", "x"), ("y", "w"), ("x", "w")]


def test_ties_give_no_pair():
    # a and c tie at 1, b is 3rd: a>b and c>b only.
    assert rankings_to_pairs(["a", "b", "c"], [1, 3, 1]) == [("a", "b"), ("c", "b")]
    assert rankings_to_pairs(["a", "b"], [1, 1]) == []


def test_pair_count_is_n_choose_2_without_ties():
    import itertools
    import random

    rng = random.Random(0)
    for n in range(2, 7):
        ranks = list(range(1, n + 1))
        rng.shuffle(ranks)
        pairs = rankings_to_pairs([f"c{i}" for i in range(n)], ranks)
        assert len(pairs) == len(list(itertools.combinations(range(n), 2)))
        for chosen, rejected in pairs:
            assert ranks[int(chosen[1:])] < ranks[int(rejected[1:])]


# ---------------------------------------------------------------- loading, every format


ROWS = [
    {"prompt": "p1", "chosen": "good", "rejected": "bad"},
    {"prompt": "p2", "chosen": "nice", "rejected": "rude"},
]


def test_preferences_from_jsonl_csv_parquet_and_datasets_folder(tmp_path, write_jsonl):
    import datasets
    import pandas as pd

    expected = [Preference("p1", "good", "bad"), Preference("p2", "nice", "rude")]
    assert load_preferences(write_jsonl(ROWS)) == expected
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    assert load_preferences(tmp_path / "d.csv") == expected
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    assert load_preferences(tmp_path / "d.parquet") == expected
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_preferences(tmp_path / "ds") == expected


def test_rankings_file_expands_to_pairs(write_jsonl):
    path = write_jsonl([{"prompt": "q", "completions": ["a", "b", "c"], "ranks": [2, 1, 3]}])
    assert load_preferences(path) == [Preference("q", "b", "a"), Preference("q", "b", "c"), Preference("q", "a", "c")]
    assert load_rankings(path)[0].ranks == [2, 1, 3]


def test_rankings_in_csv_cells_are_json(tmp_path):
    import pandas as pd

    pd.DataFrame([{"prompt": "q", "completions": json.dumps(["a", "b"]), "ranks": json.dumps([2, 1])}]).to_csv(
        tmp_path / "r.csv", index=False
    )
    assert load_preferences(tmp_path / "r.csv") == [Preference("q", "b", "a")]


def test_conversational_preferences(write_jsonl):
    user = {"role": "user", "content": "hi"}
    path = write_jsonl([{
        "chosen": [user, {"role": "assistant", "content": "hello!"}],
        "rejected": [user, {"role": "assistant", "content": "go away"}],
    }])
    (pref,) = load_preferences(path)
    assert pref.prompt == [user] and pref.chosen == "hello!" and pref.rejected == "go away"


def test_prompts_text_and_messages(write_jsonl):
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hey"}]
    prompts = load_prompts(write_jsonl([{"prompt": "plain"}, {"messages": msgs}]))
    assert prompts == ["plain", msgs]
    assert prompt_text(prompts[1]) == "hey"


# ---------------------------------------------------------------- validation: file, row, column, problem


@pytest.mark.parametrize(
    "row, column, problem",
    [
        ({"prompt": "p", "rejected": "bad"}, "chosen", "missing column"),
        ({"prompt": "p", "chosen": "  ", "rejected": "bad"}, "chosen", "empty text"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "chosen is identical to rejected"),
        ({"chosen": "a", "rejected": "b"}, "prompt", "missing column"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt", "empty text"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "expected text"),
    ],
)
def test_preference_errors_name_file_row_column(write_jsonl, row, column, problem):
    path = write_jsonl([ROWS[0], row])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    assert err.value.row == 2 and err.value.column == column
    message = str(err.value)
    assert str(path) in message and "row 2" in message and f"'{column}'" in message and problem in message


@pytest.mark.parametrize(
    "ranks, problem",
    [
        ([1, 2], "2 ranks for 3 completions"),
        ([2, 3, 4], "not a ranking"),  # no best completion
        ([1, 2, 5], "not a ranking"),  # rank beyond N
        ([1, 1.5, 2], "not a ranking"),
        ([1, "x", 2], "not a ranking"),
        ([True, 2, 3], "not a ranking"),
        ("1,2,3", "expected a list of integers"),
    ],
)
def test_bad_ranks(write_jsonl, ranks, problem):
    path = write_jsonl([{"prompt": "q", "completions": ["a", "b", "c"], "ranks": ranks}])
    with pytest.raises(DataError, match=problem) as err:
        load_rankings(path)
    assert err.value.column == "ranks" and err.value.row == 1


def test_too_few_completions_and_empty_completion(write_jsonl):
    with pytest.raises(DataError, match="at least 2 completions"):
        load_rankings(write_jsonl([{"prompt": "q", "completions": ["a"], "ranks": [1]}]))
    with pytest.raises(DataError, match=r"completions\[1\].*empty text"):
        load_rankings(write_jsonl([{"prompt": "q", "completions": ["a", ""], "ranks": [1, 2]}]))


def test_unparsable_line_names_the_line(write_jsonl):
    path = write_jsonl([ROWS[0], "", '{"prompt": "p", "chosen": oops}'])
    with pytest.raises(DataError, match=r"row 3: unparsable JSON line"):
        load_preferences(path)


def test_non_object_line(write_jsonl):
    with pytest.raises(DataError, match="row 1: expected a JSON object"):
        load_prompts(write_jsonl(["[1, 2]"]))


def test_bad_messages(write_jsonl):
    with pytest.raises(DataError, match="unknown role 'robot'"):
        load_prompts(write_jsonl([{"messages": [{"role": "robot", "content": "x"}]}]))
    with pytest.raises(DataError, match=r"message 0 is not a \{role, content\} object"):
        load_prompts(write_jsonl([{"messages": [{"text": "x"}]}]))


def test_missing_file_unknown_type_and_empty_file(tmp_path, write_jsonl):
    with pytest.raises(UserError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unknown file type '.txt'"):
        load_prompts(tmp_path / "x.txt")
    with pytest.raises(UserError, match="no rows"):
        load_prompts(write_jsonl([]))


def test_all_tied_rankings_are_an_error_not_silence(write_jsonl):
    with pytest.raises(UserError, match="full tie"):
        load_preferences(write_jsonl([{"prompt": "q", "completions": ["a", "b"], "ranks": [1, 1]}]))
