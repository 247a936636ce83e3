"""Agreement statistics against numbers worked out by hand or taken from the literature."""

import pytest

from rlhfkit.feedback.agreement import (cohen_kappa, krippendorff_alpha_nominal, pair_judgments,
                                        ranking_agreement)


def test_pair_judgments_smaller_rank_wins():
    # ranks [2, 1, 2]: completion 1 beats 0 and 2; 0 and 2 tie.
    assert pair_judgments([2, 1, 2]) == {(0, 1): ">", (0, 2): "=", (1, 2): "<"}


def test_cohen_kappa_2x2_by_hand():
    # Table: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 (n = 50).
    # p_o = (20 + 15) / 50 = 0.7
    # p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_edges():
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    # Systematic disagreement: p_o = 0, p_e = 0.5 -> kappa = -1.
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined, not 1
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_krippendorff_alpha_nominal_literature_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 coders x 12
    # units with missing values; the published nominal alpha is 0.743.
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*coders)]
    assert krippendorff_alpha_nominal(units) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_small_by_hand():
    # Units ("a","a"), ("a","b"), ("b","b"): coincidences o_aa = 2, o_ab = o_ba = 1, o_bb = 2,
    # n_a = n_b = 3, n = 6. D_o = 2/6; D_e = 2*3*3 / (6*5) = 0.6; alpha = 1 - (1/3)/0.6 = 4/9.
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"], ["c"]]) == pytest.approx(1.0)
    assert krippendorff_alpha_nominal([["a"], ["b"]]) is None  # nothing pairable
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # no variation


def test_ranking_agreement_two_annotators_by_hand():
    # Item 1, 3 completions: ann [1,2,3] -> pairs (<,<,<); bob [2,1,3] -> (>,<,<).
    # Item 2: both [1,2] -> (<).  Item 3: both [2,1] -> (>).
    # Units (5): ann = <,<,<,<,>   bob = >,<,<,<,>.   p_o = 4/5.
    # ann {<:4, >:1}, bob {<:3, >:2}: p_e = (4*3 + 1*2) / 25 = 14/25.
    # kappa = (4/5 - 14/25) / (1 - 14/25) = (6/25) / (11/25) = 6/11.
    labels = [(1, "ann", [1, 2, 3]), (1, "bob", [2, 1, 3]), (2, "ann", [1, 2]), (2, "bob", [1, 2]),
              (3, "ann", [2, 1]), (3, "bob", [2, 1])]
    got = ranking_agreement(labels)
    assert got["annotators"] == 2 and got["pair_units"] == 5
    assert got["cohen_kappa"] == pytest.approx(6 / 11)
    # Alpha, nominal: o_<< = 6, o_<> = o_>< = 1, o_>> = 2; n_< = 7, n_> = 3, n = 10.
    # D_o = 2/10; D_e = 2*7*3 / (10*9) = 42/90; alpha = 1 - (2/10) / (42/90) = 4/7.
    assert got["krippendorff_alpha_nominal"] == pytest.approx(4 / 7)
    # Bob reversing every judgment must push both below zero.
    flipped = [(i, a, [len(r) + 1 - x for x in r] if a == "bob" else r) for i, a, r in labels]
    assert ranking_agreement(flipped)["cohen_kappa"] < 0


def test_ranking_agreement_three_annotators_gives_alpha_only():
    labels = [(1, a, [1, 2]) for a in "xyz"] + [(2, a, [2, 1]) for a in "xyz"]
    got = ranking_agreement(labels)
    assert got["cohen_kappa"] is None
    assert got["krippendorff_alpha_nominal"] == pytest.approx(1.0)
