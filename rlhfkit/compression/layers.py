"""The decoder blocks of a language model, and a copy of the model that keeps only some of them.

Depth pruning (`prune --method depth`) and the layer-dropped distillation student
(`distill --student-layers N`) both build on `keep_layers`: the kept blocks are the teacher's own
(deep-copied weights), the rest are gone, and the config says how many remain, so the result saves
and loads as an ordinary transformers folder of the same architecture.
"""

from __future__ import annotations

import copy

from rlhfkit.errors import UserError

# config fields that count the blocks of each stack, by architecture family
_COUNT_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")


def block_stacks(model) -> list[tuple[str, object]]:
    """[(path, ModuleList)] of the model's transformer blocks: one stack for decoder-only models
    (Llama/Qwen/Mistral `model.layers`, GPT-2 `transformer.h`), two for T5 (encoder, decoder)."""
    import torch

    candidates = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers",
                  "encoder.block", "decoder.block")
    found = []
    for path in candidates:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList) and len(obj):
            found.append((path, obj))
    if not found:
        raise UserError(f"{type(model).__name__}: no stack of transformer blocks found (looked for "
                        f"{', '.join(candidates)}); layer dropping supports Llama-style, GPT-2 and T5 models")
    return found


def evenly_spaced(n: int, keep: int) -> list[int]:
    """`keep` of `n` block indices spread evenly, first and last included (DistilBERT-style init)."""
    if not 1 <= keep <= n:
        raise UserError(f"cannot keep {keep} of {n} layers; choose between 1 and {n}")
    if keep == 1:
        return [0]
    return sorted({round(i * (n - 1) / (keep - 1)) for i in range(keep)})


def keep_layers(model, keep: list[int] | dict[str, list[int]]):
    """A deep copy of `model` with only the blocks `keep` (per stack path, or one list for every stack)."""
    import torch

    stacks = block_stacks(model)
    plan = keep if isinstance(keep, dict) else {path: list(keep) for path, _ in stacks}
    out = copy.deepcopy(model)
    sizes = {}
    for path, blocks in stacks:
        idx = sorted(set(plan.get(path, range(len(blocks)))))
        if not idx or idx[0] < 0 or idx[-1] >= len(blocks):
            raise UserError(f"{path}: layer indices {idx} are outside 0..{len(blocks) - 1}")
        if path.endswith("block") and 0 not in idx:
            # T5 keeps its relative position bias in block 0 only
            raise UserError(f"{path}: T5's first block holds the relative position bias and cannot be dropped")
        parent = out
        for part in path.split(".")[:-1]:
            parent = getattr(parent, part)
        old = getattr(parent, path.split(".")[-1])
        new = torch.nn.ModuleList([old[i] for i in idx])
        for new_idx, block in enumerate(new):
            for module in block.modules():  # the KV cache is indexed by each attention's layer_idx
                if hasattr(module, "layer_idx") and isinstance(module.layer_idx, int):
                    module.layer_idx = new_idx
        setattr(parent, path.split(".")[-1], new)
        sizes[path] = (idx, len(blocks))
    _update_config(out.config, sizes)
    return out


def _update_config(config, sizes: dict) -> None:
    (first, (idx, _)), *_ = sizes.items()
    if "decoder.block" in sizes:  # T5: num_layers is the encoder's, num_decoder_layers the decoder's
        config.num_layers = len(sizes.get("encoder.block", (idx, 0))[0])
        config.num_decoder_layers = len(sizes["decoder.block"][0])
        return
    for name in _COUNT_FIELDS:
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, len(idx))
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and len(types) == sizes[first][1]:
        config.layer_types = [types[i] for i in idx]


def count_blocks(model) -> int:
    return sum(len(blocks) for _, blocks in block_stacks(model))
