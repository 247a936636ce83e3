"""The prompts an online run trains on: loading them, and the seeded stream of batches drawn from them."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.errors import UserError


def _ids(x) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x]


class PromptStream:
    """Indices of the prompts of each batch: per-epoch permutations of the prompt set (seeded), this
    process's share of each batch, every prompt `num_generations` times in a row. `consumed` (the
    position in the stream, over all processes) is all its state."""

    def __init__(self, n_prompts: int, batch_size: int, num_generations: int, seed: int, process_index: int = 0,
                 num_processes: int = 1):
        self.n, self.per_batch, self.g = n_prompts, batch_size // num_generations, num_generations
        self.seed, self.rank, self.world = seed, process_index, num_processes
        self.position = {"consumed": 0}

    def next(self) -> list[int]:
        start = self.position["consumed"] + self.rank * self.per_batch
        self.position["consumed"] += self.per_batch * self.world
        out, perms = [], {}
        for p in range(start, start + self.per_batch):
            epoch = p // self.n
            if epoch not in perms:
                gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
                perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
            out += [perms[epoch][p % self.n]] * self.g
        return out


def load_prompt_dataset(config, tokenizer, dataset):
    """(prompts as given, query token ids): prompts from a file, a list, or a datasets.Dataset."""
    from rlhfkit.data import load_prompts
    from rlhfkit.models.generation import encode_prompts

    if dataset is None and config.prompts:
        dataset = config.prompts
    if dataset is None:
        return None, None
    if isinstance(dataset, (str, Path)):
        dataset = load_prompts(dataset)
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        text_col = next((c for c in ("prompt", "query", "messages") if c in columns), None)
        if "input_ids" in columns:
            queries = [_ids(x) for x in dataset["input_ids"]]
            texts = list(dataset[text_col]) if text_col else tokenizer.batch_decode(queries, skip_special_tokens=True)
            return texts, queries
        if text_col is None:
            raise UserError(f"dataset has columns {columns}; the trainer needs 'prompt', 'query', 'messages' or 'input_ids'")
        dataset = list(dataset[text_col])
    prompts = list(dataset)
    if not prompts:
        raise UserError("the prompt dataset is empty")
    return prompts, encode_prompts(tokenizer, prompts, max_length=config.max_prompt_tokens)
