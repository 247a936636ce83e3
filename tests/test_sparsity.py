"""Pruning maths (rlhfkit.ops.sparsity) against hand-worked examples."""

import pytest
import torch

from rlhfkit.errors import UserError
from rlhfkit.ops import sparsity as sp


def test_wanda_scores_weigh_each_weight_by_its_input_norm():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    sq = torch.tensor([4.0, 1.0])  # ||x_0|| = 2, ||x_1|| = 1
    assert torch.equal(sp.wanda_scores(w, sq), torch.tensor([[2.0, 2.0], [6.0, 0.5]]))


def test_wanda_and_magnitude_disagree_where_inputs_differ():
    # magnitude drops the smallest |w| (column 0); Wanda keeps it because its input is 10x larger
    w = torch.tensor([[0.5, 1.0]])
    sq = torch.tensor([100.0, 1.0])
    assert sp.unstructured_mask(sp.magnitude_scores(w), 0.5).tolist() == [[False, True]]
    assert sp.unstructured_mask(sp.wanda_scores(w, sq), 0.5).tolist() == [[True, False]]


def test_row_mask_prunes_each_row_equally_and_layer_mask_globally():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    row = sp.unstructured_mask(scores, 0.5, per="row")
    assert row.tolist() == [[False, False, True, True], [False, False, True, True]]
    layer = sp.unstructured_mask(scores, 0.5, per="layer")
    assert layer.tolist() == [[False, False, False, False], [True, True, True, True]]


def test_nm_mask_keeps_n_of_every_m():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.1, 0.4, 0.3, 0.2]])
    mask = sp.nm_mask(scores, 2, 4)
    assert mask.tolist() == [[True, False, True, False, False, True, True, False]]
    big = sp.nm_mask(torch.rand(16, 32), 2, 4)
    assert (big.reshape(16, 8, 4).sum(-1) == 2).all()
    with pytest.raises(UserError, match="groups of 4"):
        sp.nm_mask(torch.rand(2, 6), 2, 4)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"in \(0, 1\)"):
        sp.check_sparsity(bad)


@pytest.mark.parametrize("bad", ["2-4", "4:2", "0:4", "x"])
def test_bad_patterns(bad):
    with pytest.raises(UserError, match="N:M"):
        sp.parse_pattern(bad)


def test_block_influence_is_zero_for_identity_and_one_for_orthogonal_outputs():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert sp.block_influence(h, h) == (0.0, 2)
    out = torch.tensor([[[0.0, 1.0], [-3.0, 0.0]]])
    s, n = sp.block_influence(h, out)
    assert n == 2 and s == pytest.approx(2.0)
    # a masked token does not count
    s, n = sp.block_influence(h, torch.tensor([[[1.0, 0.0], [0.0, -1.0]]]), torch.tensor([[1, 0]]))
    assert (s, n) == (0.0, 1)
