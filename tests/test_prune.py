"""`rlhfkit prune`: the sparsity asked for is reached, the saved dense folder reloads and generates the
same tokens, Wanda uses its calibration activations, depth pruning drops the least influential blocks."""

import json

import pytest
import torch

from rlhfkit.errors import UserError


@pytest.fixture
def calibration(write_jsonl):
    rows = [{"prompt": p} for p in ["Write a kind reply to my neighbour.", "Tell me about the weather today.",
                                    "Why is the referee wrong?", "Say something nice about dogs.",
                                    "My landlord is angry, what do I say?", "Thank you for the help!"]]
    return write_jsonl(rows, "calibration.jsonl")


def _reload(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(folder)).eval(), AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_unstructured_sparsity_is_reached_and_the_folder_reloads(tiny_llama_dir, tmp_path, calibration, method):
    from rlhfkit.compression.prune import layer_sparsity, prunable_layers, prune_model
    from rlhfkit.compression.quantize import probe_tokens

    result = prune_model(str(tiny_llama_dir), tmp_path / "p", method, sparsity=0.5, calibration=str(calibration))
    model, tok = _reload(tmp_path / "p")
    reached, overall = layer_sparsity(model)
    assert reached == pytest.approx(0.5, abs=1e-3)
    assert 0 < overall < reached  # embeddings and norms are not pruned
    assert probe_tokens(model, tok) == result.tokens
    if method == "wanda":  # compared within each output row: every row loses exactly half
        for _, _, m in prunable_layers(model):
            assert ((m.weight == 0).sum(1) == m.weight.shape[1] // 2).all()
    info = json.loads((tmp_path / "p" / "compression.json").read_text())
    assert info["sparsity_reached"] == pytest.approx(0.5, abs=1e-3)


def test_nm_pattern(tiny_llama_dir, tmp_path, calibration):
    from rlhfkit.compression.prune import prunable_layers, prune_model

    prune_model(str(tiny_llama_dir), tmp_path / "p", "wanda", pattern="2:4", calibration=str(calibration))
    model, _ = _reload(tmp_path / "p")
    for _, _, m in prunable_layers(model):
        groups = (m.weight != 0).reshape(m.weight.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all() and (groups == 2).float().mean() > 0.99
    with pytest.raises(UserError, match="removes 50%"):
        prune_model(str(tiny_llama_dir), tmp_path / "q", "wanda", sparsity=0.3, pattern="2:4",
                    calibration=str(calibration))


def test_wanda_uses_the_calibration_inputs(tiny_llama_dir, calibration):
    """Inputs scaled up on one feature make Wanda keep that feature's weights; magnitude cannot see it."""
    from rlhfkit.compression.prune import _input_norms, calibration_batches, prunable_layers
    from rlhfkit.compression.source import load_source
    from rlhfkit.data import load_prompts

    src = load_source(str(tiny_llama_dir))
    batches = calibration_batches(src.tokenizer, load_prompts(calibration), False)
    layers = [x for x in prunable_layers(src.model) if x[0] == 1]
    norms = _input_norms(src.model, layers, batches)
    # the norms are the real ones: recompute the down projection's input norm by hand
    captured = []
    down = dict((n, m) for _, n, m in layers)["model.layers.1.mlp.down_proj"]
    h = down.register_forward_pre_hook(lambda m, a: captured.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            src.model(**b)
    h.remove()
    by_hand = sum((x[b["attention_mask"].bool()] ** 2).sum(0) for x, b in zip(captured, batches))
    assert torch.allclose(norms["model.layers.1.mlp.down_proj"], by_hand, rtol=1e-4)


def test_depth_pruning_drops_the_least_influential_blocks(tiny_llama_dir, tmp_path, calibration):
    from rlhfkit.compression.prune import prune_model

    result = prune_model(str(tiny_llama_dir), tmp_path / "d", "depth", drop_layers=2, calibration=str(calibration))
    scores = result.details["block_influence"]
    assert len(scores) == 4 and all(s > 0 for s in scores)
    assert sorted(result.details["dropped_layers"]) == sorted(sorted(range(4), key=lambda i: scores[i])[:2])
    model, _ = _reload(tmp_path / "d")
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert result.sparsity == 0.5


def test_bad_inputs(tiny_llama_dir, tmp_path, calibration):
    from rlhfkit.compression.prune import prune_model

    with pytest.raises(UserError, match=r"in \(0, 1\)"):
        prune_model(str(tiny_llama_dir), tmp_path / "p", "magnitude", sparsity=1.2)
    with pytest.raises(UserError, match="--calibration"):
        prune_model(str(tiny_llama_dir), tmp_path / "p", "wanda", sparsity=0.5)
    with pytest.raises(UserError, match="no config.json"):
        prune_model(str(tmp_path), tmp_path / "p", "magnitude", sparsity=0.5)


def test_gpt2_conv1d_is_pruned_too(tmp_path, calibration):
    from rlhfkit.compression.prune import prune_model

    result = prune_model("tiny-gpt2", tmp_path / "g", "wanda", sparsity=0.5, calibration=str(calibration))
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)


def test_seq2seq_wanda_reaches_both_stacks(tmp_path, calibration):
    from transformers import AutoModelForSeq2SeqLM

    from rlhfkit.compression.prune import layer_sparsity, prune_model

    prune_model("tiny-t5", tmp_path / "t", "wanda", sparsity=0.5, calibration=str(calibration))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "t"))
    assert layer_sparsity(model)[0] == pytest.approx(0.5, abs=1e-3)
    for stack in (model.encoder.block, model.decoder.block):
        w = stack[-1].layer[-1].DenseReluDense.wo.weight
        assert (w == 0).float().mean() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(UserError, match="decoder-only"):
        prune_model("tiny-t5", tmp_path / "d", "depth", drop_layers=1, calibration=str(calibration))


def test_sequential_wanda_matches_the_full_forward_per_block(tiny_llama_dir, calibration):
    """The fast path (each block run alone on the previous pruned block's outputs) prunes what running
    the whole model up to each block would."""
    from rlhfkit.compression.prune import _input_norms, calibration_batches, prunable_layers, prune_weights
    from rlhfkit.compression.source import load_source
    from rlhfkit.data import load_prompts
    from rlhfkit.ops import sparsity as sp

    fast, slow = load_source(str(tiny_llama_dir)), load_source(str(tiny_llama_dir))
    batches = calibration_batches(fast.tokenizer, load_prompts(calibration), False, batch_size=4)
    prune_weights(fast.model, "wanda", 0.5, None, batches, progress=False)
    layers = prunable_layers(slow.model)
    for b in sorted({b for b, _, _ in layers}):
        mine = [x for x in layers if x[0] == b]
        norms = _input_norms(slow.model, mine, batches)
        for _, name, m in mine:
            m.weight.data.mul_(sp.unstructured_mask(sp.wanda_scores(m.weight.data, norms[name]), 0.5))
    for (_, name, a), (_, _, b) in zip(prunable_layers(fast.model), layers):
        assert ((a.weight == 0) == (b.weight == 0)).float().mean() > 0.999, name
