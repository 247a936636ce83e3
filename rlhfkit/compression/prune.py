"""Pruning: weights that contribute little set to zero (magnitude, Wanda, N:M), or whole blocks
dropped by their measured influence (depth). The result is an ordinary dense transformers folder
(zeros in place, or fewer blocks), and compression.json says the sparsity actually reached.

    rlhfkit prune --model DIR --method magnitude|wanda --sparsity 0.5 [--pattern 2:4] --calibration prompts --out DIR
    rlhfkit prune --model DIR --method depth --drop-layers 8 --calibration prompts --out DIR

Every linear layer inside the transformer blocks is pruned (attention and MLP projections; not the
embeddings or the output head), GPT-2's Conv1D included. Wanda runs block by block as the paper's
code does: the calibration inputs of block i come from blocks 0..i-1 already pruned, so later
blocks see the errors of earlier ones. The maths is in `rlhfkit.ops.sparsity`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.errors import UserError
from rlhfkit.ops import sparsity as sp

METHODS = ("magnitude", "wanda", "depth")


class _Stop(Exception):
    """Raised by a hook once the block of interest has run: the rest of the forward is not needed."""


@dataclass
class PruneResult:
    out: Path
    method: str
    sparsity: float            # zeros / weights over the pruned layers (unstructured); blocks dropped / blocks (depth)
    model_sparsity: float      # zeros / all parameters of the saved model
    details: dict = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- which weights


def _is_conv1d(module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")  # transformers' GPT-2 projection


def prunable_layers(model) -> list[tuple[int, str, object]]:
    """[(global block number, name, module)] of every linear layer inside the transformer blocks."""
    from rlhfkit.compression.layers import block_stacks

    out, number = [], 0
    for path, blocks in block_stacks(model):
        for i, block in enumerate(blocks):
            for name, module in block.named_modules():
                if isinstance(module, torch.nn.Linear) or _is_conv1d(module):
                    out.append((number, f"{path}.{i}.{name}", module))
            number += 1
    return out


def weight_view(module) -> torch.Tensor:
    """The weight as [out_features, in_features] (a view: Conv1D stores it transposed)."""
    return module.weight.data.t() if _is_conv1d(module) else module.weight.data


def layer_sparsity(model) -> tuple[float, float]:
    """(zeros / weights over the prunable layers, zeros / all parameters)."""
    zeros = total = 0
    for _, _, m in prunable_layers(model):
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    seen, all_zeros, all_total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        all_zeros += int((p == 0).sum())
        all_total += p.numel()
    return zeros / max(total, 1), all_zeros / max(all_total, 1)


# ---------------------------------------------------------------- calibration


def calibration_batches(tokenizer, prompts, seq2seq: bool, batch_size: int = 8, max_length: int = 256):
    """Padded batches (right) of the formatted calibration prompts: [{input_ids, attention_mask, ...}]."""
    from rlhfkit.models.generation import encode_prompts, pad

    if not prompts:
        raise UserError("--calibration has no prompts; give a prompts file (rows {\"prompt\": ...})")
    ids = [q for q in encode_prompts(tokenizer, prompts, max_length=max_length) if q]
    batches = []
    for i in range(0, len(ids), batch_size):
        input_ids, mask = pad(ids[i:i + batch_size], tokenizer.pad_token_id, side="right")
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if seq2seq:  # the decoder reads the same text, so its layers see real activations too
            batch["decoder_input_ids"] = input_ids
            batch["decoder_attention_mask"] = mask
        batches.append(batch)
    return batches


def _run(model, batches, device=None):
    with torch.no_grad():
        for batch in batches:
            try:
                model(**{k: v.to(device) if device else v for k, v in batch.items()})
            except _Stop:
                pass


def _square_sum_hook(sums: dict, name: str, current: dict):
    """A forward pre-hook adding sum_t x_tj^2 over the non-padding tokens (`current["mask"]`) of a
    layer's input to `sums[name]`: Wanda's input norms, squared."""
    def hook(module, args):
        x = args[0].detach().float()
        mask = current["mask"]
        if x.dim() == 3 and mask.shape == x.shape[:2]:
            x = x[mask.bool()]
        x = x.reshape(-1, x.shape[-1])
        s = (x * x).sum(0)
        sums[name] = s if sums[name] is None else sums[name] + s
    return hook


def _input_norms(model, layers, batches) -> dict[str, torch.Tensor]:
    """Sum over non-padding calibration tokens of x_j^2 for each layer's inputs (one forward, stopped
    after the last of these layers has run)."""
    sums = {name: None for _, name, _ in layers}
    current = {}
    handles = []

    def pre_hook(name):
        return _square_sum_hook(sums, name, current)

    def stop_hook(module, args, output):
        raise _Stop

    for _, name, module in layers:
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
    handles.append(layers[-1][2].register_forward_hook(stop_hook))
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch["attention_mask"]
                try:
                    model(**batch)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, s in sums.items() if s is None]
    if missing:
        raise UserError(f"calibration never reached {missing[0]}; check the model and the calibration prompts")
    return sums


def _apply(module, keep: torch.Tensor) -> None:
    w = weight_view(module)
    w.mul_(keep.to(w.dtype))


# ---------------------------------------------------------------- unstructured and N:M


def prune_weights(model, method: str, sparsity: float | None, pattern: str | None, batches=None,
                  progress: bool = True) -> dict:
    """Zero weights of every prunable layer in place; returns what was done."""
    from tqdm.auto import tqdm

    nm = sp.parse_pattern(pattern) if pattern else None
    if nm:
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise UserError(f"--pattern {pattern} removes {implied:.0%} of the weights; drop --sparsity "
                            f"({sparsity}) or make it {implied:g}")
        sparsity = implied
    sp.check_sparsity(sparsity)
    layers = prunable_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__}: no linear layers inside its blocks to prune")
    if nm:
        bad = [n for _, n, m in layers if weight_view(m).shape[1] % nm[1]]
        if bad:
            raise UserError(f"--pattern {pattern}: {bad[0]} has {weight_view(dict((n, m) for _, n, m in layers)[bad[0]]).shape[1]} "
                            f"inputs, not a multiple of {nm[1]}")
    if method == "wanda" and not batches:
        raise UserError("--method wanda needs calibration prompts (--calibration FILE)")
    def prune_block(mine, norms):
        for _, name, module in mine:
            w = weight_view(module)
            scores = sp.wanda_scores(w, norms[name]) if method == "wanda" else sp.magnitude_scores(w)
            if nm:
                keep = sp.nm_mask(scores, *nm)
            else:  # Wanda compares within each output row; magnitude across the layer (as the Wanda paper)
                keep = sp.unstructured_mask(scores, sparsity, per="row" if method == "wanda" else "layer")
            _apply(module, keep)

    from rlhfkit.compression.layers import block_stacks

    blocks = sorted({b for b, _, _ in layers})
    bar = tqdm(blocks, desc=f"pruning ({method})", unit="block", disable=not progress)
    if method == "wanda" and len(block_stacks(model)) == 1:
        _wanda_sequential(model, layers, batches, prune_block, bar)
    else:  # magnitude needs no data; a seq2seq model runs the whole forward up to each block
        for b in bar:
            mine = [(bb, n, m) for bb, n, m in layers if bb == b]
            prune_block(mine, _input_norms(model, mine, batches) if method == "wanda" else {})
    bar.close()
    return {"target_sparsity": sparsity, "pattern": pattern, "layers": len(layers),
            "calibration_batches": len(batches or [])}


def _wanda_sequential(model, layers, batches, prune_block, bar) -> None:
    """Wanda on a decoder-only model as the paper's code runs it: one dense pass records each block's
    call (its first input and its keyword arguments: masks, rotary embeddings); then block by block,
    the block runs on the previous pruned block's outputs with hooks collecting its layers' input
    norms, is pruned, and runs again to give the next block its inputs. Two block passes per block,
    not a forward through every block before it."""
    from rlhfkit.compression.layers import block_stacks

    (_, blocks), = block_stacks(model)
    calls: list[list] = [[] for _ in blocks]  # per block, per batch: (args after the hidden states, kwargs)
    first_inputs = []

    def record(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls[i].append((tuple(args[1:]), rest))
            if i == 0:
                first_inputs.append(hidden.detach())
            if i == len(blocks) - 1:
                raise _Stop
        return hook

    handles = [b.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(**batch, use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    hidden = first_inputs

    def run_block(i, states):
        out = []
        for h, (args, kwargs) in zip(states, calls[i]):
            y = blocks[i](h, *args, **kwargs)
            out.append((y[0] if isinstance(y, (tuple, list)) else y).detach())
        return out

    for b in bar:
        mine = [(bb, n, m) for bb, n, m in layers if bb == b]
        sums = {n: None for _, n, _ in mine}
        current = {}

        def pre_hook(name):
            return _square_sum_hook(sums, name, current)

        handles = [m.register_forward_pre_hook(pre_hook(n)) for _, n, m in mine]
        try:
            with torch.no_grad():
                for h, (args, kwargs), batch in zip(hidden, calls[b], batches):
                    current["mask"] = batch["attention_mask"]
                    blocks[b](h, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        prune_block(mine, sums)
        with torch.no_grad():
            hidden = run_block(b, hidden)  # the pruned block's outputs feed the next one


# ---------------------------------------------------------------- depth


def block_influences(model, batches) -> list[float]:
    """Mean over calibration tokens of 1 - cos(block input, block output), for each decoder block."""
    from rlhfkit.compression.layers import block_stacks

    stacks = block_stacks(model)
    if len(stacks) != 1:
        raise UserError("--method depth drops blocks of decoder-only models; for a seq2seq model use "
                        "--method magnitude or wanda, or distill it (`rlhfkit distill --student-layers N`)")
    (_, blocks), = stacks
    sums = [[0.0, 0] for _ in blocks]
    current = {}

    def hook(i):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            s, n = sp.block_influence(h_in, h_out, current["mask"])
            sums[i][0] += s
            sums[i][1] += n
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch["attention_mask"]
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return [s / max(n, 1) for s, n in sums]


def depth_prune(model, drop: int, batches) -> tuple[object, dict]:
    """A copy without the `drop` blocks of lowest block influence (ShortGPT)."""
    from rlhfkit.compression.layers import block_stacks, keep_layers

    if not batches:
        raise UserError("--method depth measures each block on calibration prompts; pass --calibration FILE")
    (_, blocks), = block_stacks(model)[:1]
    if not 0 < drop < len(blocks):
        raise UserError(f"--drop-layers {drop}: the model has {len(blocks)} blocks; drop between 1 and {len(blocks) - 1}")
    scores = block_influences(model, batches)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    dropped = sorted(order[:drop])
    kept = [i for i in range(len(scores)) if i not in dropped]
    return keep_layers(model, kept), {"block_influence": scores, "dropped_layers": dropped, "kept_layers": kept,
                                      "layers_before": len(scores), "layers_after": len(kept)}


# ---------------------------------------------------------------- the command


def prune_model(model: str, out, method: str, sparsity: float | None = None, pattern: str | None = None,
                calibration: str | None = None, n_calibration: int = 64, drop_layers: int | None = None,
                progress: bool = True) -> PruneResult:
    """Prune `model` (folder, adapter folder or name) into the plain folder `out`."""
    from transformers import AutoConfig

    from rlhfkit.compression.quantize import probe_tokens
    from rlhfkit.compression.source import check_output, load_source, save_plain
    from rlhfkit.data import load_prompts

    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method != "depth" and pattern is None:
        if sparsity is None:
            raise UserError("--sparsity is required: the fraction of weights to remove, in (0, 1), e.g. 0.5")
        sp.check_sparsity(sparsity)
    if pattern and method == "depth":
        raise UserError("--pattern applies to --method magnitude or wanda, not depth")
    if pattern:
        sp.parse_pattern(pattern)  # a bad pattern fails before the model loads
    out = check_output(out, [model])
    src = load_source(model)
    needs_data = method in ("wanda", "depth")
    if needs_data and not calibration:
        raise UserError(f"--method {method} needs calibration prompts: pass --calibration FILE (rows {{\"prompt\": ...}})")
    batches = calibration_batches(src.tokenizer, load_prompts(calibration)[:n_calibration], src.seq2seq) \
        if needs_data else None
    net = src.model
    if method == "depth":
        from rlhfkit.compression.layers import block_stacks

        n = len(block_stacks(net)[0][1])
        if drop_layers is None:
            if sparsity is None:
                raise UserError("--method depth: say how many blocks to drop with --drop-layers K (or a fraction "
                                "with --sparsity)")
            sp.check_sparsity(sparsity)
            drop_layers = max(1, round(sparsity * n))
        net, details = depth_prune(net, drop_layers, batches)
        reached = drop_layers / n
    else:
        details = prune_weights(net, method, sparsity, pattern, batches, progress)
        reached = None
    tokens = probe_tokens(net, src.tokenizer)
    if out.exists():
        shutil.rmtree(out)
    save_plain(net, src.tokenizer, out)
    # the saved folder, read back with plain transformers: same tokens, same zeros
    config = AutoConfig.from_pretrained(str(out))
    from rlhfkit.compression.quantize import _model_class

    reloaded = _model_class(config).from_pretrained(str(out)).eval()
    again = probe_tokens(reloaded, src.tokenizer)
    if again != tokens:
        raise UserError(f"{out}: the reloaded model generates differently from the pruned one; not saved correctly")
    weights_sparsity, model_sparsity = layer_sparsity(reloaded)
    if reached is None:
        reached = weights_sparsity
    details.update({"sparsity_reached": reached, "model_sparsity": model_sparsity,
                    "linear_weight_sparsity": weights_sparsity})
    (out / "compression.json").write_text(json.dumps(
        {"method": "prune", "prune_method": method, "source": str(model), "calibration": calibration,
         **details}, indent=1))
    what = (f"dropped blocks {details['dropped_layers']} of {details['layers_before']}" if method == "depth"
            else f"{weights_sparsity:.1%} of the block weights are zero")
    print(f"rlhfkit prune: {method}: {what} ({model_sparsity:.1%} of all parameters); {out} reloads and "
          "generates the same tokens")
    return PruneResult(out, method, reached, model_sparsity, details, again)
