"""PPO with a KL leash to a frozen reference, for causal and seq2seq models.

Step-wise API (keep your own loop):

    trainer = PPOTrainer(config, model, tokenizer=tokenizer, dataset=prompts)
    responses = trainer.generate(query_tensors)
    stats = trainer.step(query_tensors, responses, scores)
    trainer.log_stats(stats, {"query": prompts, "response": texts}, scores)

or the whole loop: `trainer.train(reward, steps)`. One step: sample; score; one
forward pass for policy log-probs and values, one for reference log-probs
(adapters disabled when LoRA); per-token reward -beta * KL plus the score on the
last token; GAE; whitened advantages; `ppo_epochs` passes of clipped policy and
value losses over shuffled mini-batches. Devices, backward and metric gathering
go through `accelerate`, so `accelerate launch` scales the same loop out.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import save_yaml
from rlhfkit.cpu import eager_attention, store_frozen_in_bf16
from rlhfkit.errors import UserError
from rlhfkit.generation import sample, static_cache_kwargs
from rlhfkit.losses import (
    AdaptiveKLController, FixedKLController, RunningMoments, kl_estimate, masked_gae, masked_mean, masked_var,
    policy_loss, value_loss,
)
from rlhfkit.models import checkpoint_activations, compile_layers
from rlhfkit.ppo_checkpoint import (  # noqa: F401  (re-exported)
    OPTIMIZER_FILE, STATE_FILE, WEIGHTS_FILE, append_logs, find_checkpoint, load_checkpoint, save_checkpoint,
    save_final_model,
)
from rlhfkit.ppo_config import PPOConfig  # noqa: F401  (re-exported: rlhfkit.ppo.PPOConfig)
from rlhfkit.rollout import (
    Batch, adapter_layers, adapters_disabled, decoder_start_id, forward, make_batch, rollout_pass,
)
from rlhfkit.value_head import (
    ModelWithValueHead, create_reference_model, sparse_tied_embedding_grad,
)


def _accelerator(mixed_precision: str):
    """An Accelerator; in a single process, a trainer may pick another precision than an earlier one did."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError as e:  # accelerate's state is process-wide and refuses a second precision
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=mixed_precision)


def _adam(params: list, lr: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel where it exists (CPU and CUDA): several times faster than the
    per-tensor loop on CPU, where the step over a full model's weights is a large share of PPO."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr)


def _ids(x) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x]


class PPOTrainer:
    """PPO over a `ModelWithValueHead` (built from `model` when it is a plain LM or a name)."""

    def __init__(self, config: PPOConfig, model=None, ref_model=None, tokenizer=None, dataset=None, optimizer=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        config.validate()
        self.config = config
        set_seed(config.seed)
        self.accelerator = _accelerator(config.mixed_precision)
        model, tokenizer = self._load_model(model, tokenizer)
        self.tokenizer = tokenizer
        self.seq2seq = model.is_encoder_decoder
        sparse_tied_embedding_grad(model.pretrained_model)
        eager_attention(model.pretrained_model)
        if config.mixed_precision == "bf16" and model.is_peft_model:
            store_frozen_in_bf16(model.pretrained_model)  # the frozen base is only ever read in bf16
        self.ref_model = self._reference(model, ref_model)
        self._adapter_layers = adapter_layers(model.pretrained_model) if model.is_peft_model else None
        if config.mixed_precision != "no":
            # peft casts every adapter's input to the adapter's float32 dtype, and autocast casts it straight
            # back: an activation copy per adapted layer, kept for the backward pass. Autocast alone suffices.
            for layer in self._adapter_layers or []:
                layer.cast_input_dtype_enabled = False
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer or _adam(params, config.learning_rate)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # accelerate's mixed-precision forward casts every output to float32: a full-vocabulary copy of
        # the logits (and its backward) per pass, which the float32 log-prob kernel does not need. Strip
        # that wrapper; every forward below runs inside `accelerator.autocast()` instead.
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        self.model.eval()  # dropout off while sampling and training
        self._cache_kwargs = static_cache_kwargs(model.pretrained_model) if config.static_cache else {}
        self._checkpointed = []
        if config.compile:  # after the reference copy, which stays eager
            # with gradient_checkpointing the compiler recomputes activations itself: torch.compile skips
            # layers under transformers' checkpointing, and its own recomputation is fused
            compile_layers(model.pretrained_model, memory_budget=0.0 if config.gradient_checkpointing else None)
        elif config.gradient_checkpointing:
            self._checkpointed = checkpoint_activations(model.pretrained_model)
        if config.gradient_checkpointing:
            # the response logits and their gradient are the training pass's largest tensors: recompute
            # them in row chunks too, where the model's logits are exactly its linear head's output
            start = decoder_start_id(model.pretrained_model) if self.seq2seq else None
            probe = make_batch([[0, 1]], [[1, 0]], tokenizer.pad_token_id, self.seq2seq, start, self.accelerator.device)
            with self.accelerator.autocast():
                model.chunked_head = model.head_is_last_op(**probe.inputs)
        self.scheduler = None
        if config.lr_schedule == "linear":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
                lambda s: max(0.0, 1.0 - s / config.steps))
        self.kl_ctl = (AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else FixedKLController(config.init_kl_coef))
        self.score_stats = RunningMoments()
        self.step_count, self.skipped_steps, self.bad_in_row = 0, 0, 0
        self.data_position = {"consumed": 0}
        self.history: list[dict] = []
        self.minibatch_stats: list[dict] = []
        self._warned: set[str] = set()
        self._trend: list[dict] = []
        self.prompts, self.queries = self._load_dataset(dataset)

    # ------------------------------------------------------------ setup

    def _load_model(self, model, tokenizer):
        from rlhfkit.models import LoraOptions, load_policy

        if model is None or isinstance(model, str):
            lora = LoraOptions(r=self.config.lora_r, alpha=self.config.lora_alpha) if self.config.lora else None
            dtype = self.config.dtype
            if lora and self.config.mixed_precision == "bf16" and dtype in ("float32", "fp32"):
                dtype = "bfloat16"  # the frozen base is only read in bf16; adapters stay float32 (peft)
            policy = load_policy(model or self.config.model, lora=lora, dtype=dtype)
            model, tokenizer = policy.model, tokenizer or policy.tokenizer
        if not isinstance(model, ModelWithValueHead):
            model = ModelWithValueHead(model)
        if tokenizer is None:
            raise UserError("PPOTrainer got a model object but no tokenizer; pass tokenizer=...")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def _reference(self, model: ModelWithValueHead, ref_model):
        if ref_model is not None:
            ref = ref_model.pretrained_model if isinstance(ref_model, ModelWithValueHead) else ref_model
            for p in ref.parameters():
                p.requires_grad_(False)
            ref = ref.eval().to(self.accelerator.device)
        elif model.is_peft_model:
            return None  # the policy with its adapters disabled
        else:
            ref = create_reference_model(model.pretrained_model).to(self.accelerator.device)
        eager_attention(ref)
        if self.config.mixed_precision == "bf16":
            store_frozen_in_bf16(ref, keep_embeddings=True)  # lookups as the float32 policy reads them
        return ref

    def _load_dataset(self, dataset):
        """(prompts as given, query token ids): prompts from a file, a list, or a datasets.Dataset."""
        from rlhfkit.data import load_prompts
        from rlhfkit.generation import encode_prompts

        if dataset is None and self.config.prompts:
            dataset = self.config.prompts
        if dataset is None:
            return None, None
        if isinstance(dataset, (str, Path)):
            dataset = load_prompts(dataset)
        columns = getattr(dataset, "column_names", None)
        if columns is not None:
            text_col = next((c for c in ("prompt", "query", "messages") if c in columns), None)
            if "input_ids" in columns:
                queries = [_ids(x) for x in dataset["input_ids"]]
                texts = list(dataset[text_col]) if text_col else self.tokenizer.batch_decode(queries, skip_special_tokens=True)
                return texts, queries
            if text_col is None:
                raise UserError(f"dataset has columns {columns}; PPO needs 'prompt', 'query', 'messages' or 'input_ids'")
            dataset = list(dataset[text_col])
        prompts = list(dataset)
        if not prompts:
            raise UserError("the prompt dataset is empty")
        return prompts, encode_prompts(self.tokenizer, prompts, max_length=self.config.max_prompt_tokens)

    @property
    def unwrapped(self) -> ModelWithValueHead:
        return self.accelerator.unwrap_model(self.model)

    def generate(self, query_tensors, **generation_kwargs) -> list[torch.Tensor]:
        """Sample one response per query (response tokens only, up to and including EOS).

        `generation_kwargs` override the config's generation fields (max_new_tokens,
        temperature, top_k, top_p, min_new_tokens); other keys go to HF `generate`.
        """
        settings = self.config.generation()
        extra = dict(self._cache_kwargs)
        for key, value in generation_kwargs.items():
            if hasattr(settings, key):
                setattr(settings, key, int(value) if key == "top_k" else value)
            else:
                extra[key] = value
        if settings.temperature != self.config.temperature and "temperature" not in self._warned:
            self._warned.add("temperature")
            warnings.warn("generate(temperature=...) differs from config.temperature, which step() uses for log-probs")
        queries = [_ids(q) for q in (query_tensors if not isinstance(query_tensors, torch.Tensor) or query_tensors.dim() > 1
                                     else [query_tensors])]
        size = self.config.generation_batch_size or self.config.batch_size
        model = self.unwrapped.pretrained_model
        out: list[torch.Tensor] = []
        with self.accelerator.autocast():
            for i in range(0, len(queries), size):
                for r in sample(model, self.tokenizer, queries[i:i + size], settings, **extra):
                    out.append(torch.tensor(r if r else [self.tokenizer.eos_token_id], dtype=torch.long))
        return out

    # ------------------------------------------------------------ one PPO step

    def step(self, queries, responses, scores) -> dict:
        """One PPO update from queries, their responses (token ids) and one score each; returns stats."""
        t0 = time.time()
        queries, responses = [_ids(q) for q in queries], [_ids(r) for r in responses]
        scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32)
        if not (len(queries) == len(responses) == len(scores)) or not queries:
            raise UserError(f"step() needs as many queries, responses and scores ({len(queries)}, {len(responses)}, {len(scores)})")
        if any(len(r) == 0 for r in responses):
            raise UserError("step() got an empty response; every response needs at least one token (e.g. EOS)")
        if not torch.isfinite(scores).all():
            return self._skip("non-finite reward", queries)
        raw_scores = scores.clone()
        for layer in self._checkpointed:  # in case something switched the model to eval since
            layer.training = True
        scores = self._process_scores(scores, responses)
        perms = [self._permutation(len(queries), e) for e in range(self.config.ppo_epochs)]
        data = self._rollout(queries, responses, perms[0])
        t1 = time.time()
        data.update(self._advantages(data, scores))
        train = self._optimise(queries, responses, data, perms)
        if train is None:
            return self._skip("non-finite loss", queries)
        t2 = time.time()
        stats = self._stats(data, scores, raw_scores, queries, responses, train)
        stats.update({"time/ppo/forward_pass": t1 - t0, "time/ppo/optimize_step": t2 - t1,
                      "time/ppo/train_passes": self.pass_seconds, "time/ppo/total": time.time() - t0})
        self.kl_ctl.update(stats["objective/kl"], len(queries) * self.accelerator.num_processes)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        self.bad_in_row = 0
        self._warn(stats)
        return stats

    def _skip(self, why: str, queries) -> dict:
        self.skipped_steps += 1
        self.bad_in_row += 1
        self.step_count += 1
        if self.bad_in_row >= self.config.max_bad_steps:
            first = self.tokenizer.decode(queries[0], skip_special_tokens=True)[:80]
            raise UserError(f"{self.bad_in_row} steps in a row skipped ({why}); last at step {self.step_count}, batch "
                            f"starting with prompt {first!r}; check the reward function and lower learning_rate")
        warnings.warn(f"PPO step {self.step_count}: {why}; step skipped")
        return {"ppo/skipped_steps": float(self.skipped_steps), "ppo/skipped": 1.0}

    def _process_scores(self, scores: torch.Tensor, responses) -> torch.Tensor:
        c = self.config
        if c.missing_eos_penalty is not None:
            eos = self.tokenizer.eos_token_id
            missing = torch.tensor([r[-1] != eos for r in responses])
            scores = scores - c.missing_eos_penalty * missing.float()
        if c.normalize_scores:
            self.score_stats.update(self.accelerator.gather(scores.to(self.accelerator.device)).cpu())
            scores = (scores - self.score_stats.mean) / (self.score_stats.std + 1e-8)
        if c.score_clip is not None:
            scores = scores.clamp(-c.score_clip, c.score_clip)
        return scores

    def _permutation(self, n: int, epoch: int) -> list[int]:
        """The mini-batch order of an epoch: a function of (seed, step, epoch), so resume replays it."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step_count * 1009 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def _micro_batches(self, perm: list[int]):
        """Mini-batches of the permutation, each a list of micro-batches (lists of indices)."""
        mb, micro = self.config.mini_batch_size, self.config.mini_batch_size // self.config.gradient_accumulation_steps
        for i in range(0, len(perm), mb):
            chunk = perm[i:i + mb]
            yield [chunk[j:j + micro] for j in range(0, len(chunk), micro)]

    def _batch(self, queries, responses, idx) -> Batch:
        start = decoder_start_id(self.unwrapped.pretrained_model) if self.seq2seq else None
        return make_batch([queries[i] for i in idx], [responses[i] for i in idx], self.tokenizer.pad_token_id,
                          self.seq2seq, start, self.accelerator.device)

    def _rollout(self, queries, responses, perm) -> dict:
        """Old log-probs, values, entropy (policy, in the first epoch's micro-batches, so the first
        ratio is exactly 1) and reference log-probs (`forward_batch_size` at once), all without grad under the
        trainer's autocast."""
        micro = [(m, self._batch(queries, responses, m)) for mini in self._micro_batches(perm) for m in mini]
        n, size = len(responses), self.config.forward_batch_size
        if not size and self.config.mixed_precision != "no":
            # Low-precision matmul kernels round differently for different batch shapes: reading the
            # reference in the policy's own micro-batches keeps the KL before any update exactly 0.
            ref = micro
        else:
            size = size or n
            ref = [(i, self._batch(queries, responses, i)) for i in
                   (list(range(j, min(j + size, n))) for j in range(0, n, size))]
        with self.accelerator.autocast():
            return rollout_pass(self.model, micro, ref, self._ref_logprobs, self.config.temperature, n,
                                self.accelerator.device)

    def _ref_logprobs(self, batch: Batch) -> torch.Tensor:
        if self.ref_model is not None:  # called inside _rollout's autocast
            return forward(self.ref_model, batch, self.config.temperature, with_values=False)[0]
        with adapters_disabled(self.unwrapped.pretrained_model, self._adapter_layers):
            return forward(self.model, batch, self.config.temperature, with_values=False)[0]

    def _advantages(self, data: dict, scores: torch.Tensor) -> dict:
        mask = data["mask"]
        kl = kl_estimate(data["logprobs"], data["ref_logprobs"], self.config.kl_estimator) * mask
        non_score = -self.kl_ctl.value * kl
        last = mask.sum(1).long() - 1
        rewards = non_score.clone()
        rewards[torch.arange(len(last), device=mask.device), last] += scores.to(mask.device)
        advantages, returns = masked_gae(rewards, data["values"], mask, self.config.gamma, self.config.lam)
        return {"kl": kl, "non_score": non_score, "advantages": self._whiten(advantages, mask), "returns": returns}

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Whiten over the whole batch, across all processes."""
        m = mask.float()
        sums = torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, "sum")
        n = sums[2].clamp(min=1)
        mean = sums[0] / n
        var = (sums[1] / n - mean**2).clamp(min=0) * (n / (n - 1) if n > 1 else 1.0)
        return (x - mean) * torch.rsqrt(var + 1e-8) * m

    def _optimise(self, queries, responses, data: dict, perms) -> dict | None:
        """ppo_epochs passes of clipped losses over mini-batches; mean stats, or None on a non-finite loss."""
        c, acc = self.config, self.accelerator
        self.minibatch_stats = []
        self.pass_seconds = 0.0  # forward + loss + backward of the micro-batches, without optimiser steps
        for perm in perms:
            for mini in self._micro_batches(perm):
                n_tokens = sum(data["mask"][i].sum() for i in mini).clamp(min=1)
                self.optimizer.zero_grad(set_to_none=True)
                sums: dict[str, float] = {}
                for k, micro in enumerate(mini):
                    sync = contextlib.nullcontext() if k == len(mini) - 1 else acc.no_sync(self.model)
                    t = time.perf_counter()
                    with sync:
                        stats = self._micro_step(queries, responses, data, micro, n_tokens)
                    self.pass_seconds += time.perf_counter() - t
                    if stats is None:
                        self.optimizer.zero_grad(set_to_none=True)
                        return None
                    for key, v in stats.items():
                        sums[key] = sums.get(key, 0.0) + v
                if c.max_grad_norm is not None:
                    acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], c.max_grad_norm)
                self.optimizer.step()
                sums["ratio_max_dev"] = sums["ratio_max_dev"] / len(mini)
                self.minibatch_stats.append(sums)
        keys = self.minibatch_stats[0].keys()
        return {k: sum(s[k] for s in self.minibatch_stats) / len(self.minibatch_stats) for k in keys}

    def _micro_step(self, queries, responses, data, micro, n_tokens) -> dict | None:
        c = self.config
        batch = self._batch(queries, responses, micro)
        idx, w = torch.tensor(micro, device=batch.mask.device), batch.width
        old = {k: data[k][idx, :w] for k in ("logprobs", "values", "advantages", "returns")}
        with self.accelerator.autocast():
            logprobs, values, _ = forward(self.model, batch, c.temperature)
        pl, ps = policy_loss(logprobs, old["logprobs"], old["advantages"], batch.mask, c.cliprange, n_tokens)
        vl, vs = value_loss(values, old["values"], old["returns"], batch.mask, c.cliprange_value, n_tokens)
        loss = pl + c.vf_coef * vl
        if not torch.isfinite(loss):
            return None
        self.accelerator.backward(loss)
        m = batch.mask.bool()
        ratio_dev = (torch.exp(logprobs.detach() - old["logprobs"])[m] - 1).abs().max()
        return {"loss/policy": pl.item(), "loss/value": vl.item(), "loss/total": loss.item(),
                "policy/clipfrac": ps["clipfrac"].item(), "policy/approxkl": ps["approxkl"].item(),
                "policy/policykl": ps["policykl"].item(), "policy/ratio": ps["ratio"].item(),
                "val/clipfrac": vs["clipfrac"].item(), "val/error": vs["error"].item(),
                "val/vpred": ((values.detach() * batch.mask).sum() / n_tokens).item(), "ratio_max_dev": ratio_dev.item()}

    def _stats(self, data, scores, raw_scores, queries, responses, train) -> dict:
        mask = data["mask"]
        kl_seq = data["kl"].sum(1)
        local = {
            "objective/kl": kl_seq.mean(),
            "objective/entropy": (-data["logprobs"] * mask).sum(1).mean(),
            "objective/scores": scores.mean(),
            "ppo/mean_non_score_reward": data["non_score"].sum(1).mean(),
            "ppo/mean_scores": scores.mean(),
            "ppo/std_scores": scores.std() if len(scores) > 1 else torch.tensor(0.0),
            "ppo/policy/entropy": masked_mean(data["entropy"], mask),
            "ppo/policy/advantages_mean": masked_mean(data["advantages"], mask),
            "ppo/returns/mean": masked_mean(data["returns"], mask),
            "ppo/returns/var": masked_var(data["returns"], mask),
            "ppo/val/mean": masked_mean(data["values"], mask),
            "ppo/val/var": masked_var(data["values"], mask),
            "env/reward_mean": raw_scores.mean(),
            "env/reward_std": raw_scores.std() if len(raw_scores) > 1 else torch.tensor(0.0),
            "env/hit_length_limit": torch.tensor(np.mean([self._hit_limit(r) for r in responses])),
            "tokens/queries_len_mean": torch.tensor(float(np.mean([len(q) for q in queries]))),
            "tokens/responses_len_mean": mask.sum(1).mean(),
        }
        local.update({f"ppo/{k}": torch.tensor(v) for k, v in train.items() if k != "ratio_max_dev"})
        names = list(local)
        values = torch.stack([local[k].float().to(self.accelerator.device) for k in names])
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, "mean")
        stats = {k: float(v) for k, v in zip(names, values.tolist())}
        stats["objective/kl_coef"] = float(self.kl_ctl.value)
        stats["ppo/learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        stats["ppo/skipped_steps"] = float(self.skipped_steps)
        return stats

    def _hit_limit(self, response: list[int]) -> bool:
        return len(response) >= self.config.max_new_tokens and response[-1] != self.tokenizer.eos_token_id

    def _warn(self, stats: dict) -> None:
        def once(key, message):
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(message)

        if stats["objective/kl"] < -1.0:
            once("negative_kl", f"mean KL is negative ({stats['objective/kl']:.2f}): sampling settings probably differ "
                                "from the log-prob computation (top_k/top_p/temperature); sample with top_k=0, top_p=1")
        if stats["env/hit_length_limit"] > 0.9:
            once("length", f"{100 * stats['env/hit_length_limit']:.0f}% of completions hit max_new_tokens without EOS; "
                           "raise max_new_tokens or set missing_eos_penalty")
        self._trend.append({"objective/kl": stats["objective/kl"], "env/reward_mean": stats["env/reward_mean"]})
        if len(self._trend) >= 20:
            old, new = self._trend[-20:-10], self._trend[-10:]
            kl_old, kl_new = (np.mean([h["objective/kl"] for h in w]) for w in (old, new))
            r_old, r_new = (np.mean([h["env/reward_mean"] for h in w]) for w in (old, new))
            if kl_new > max(2 * kl_old, 2 * self.config.kl_target, 10.0) and r_new > r_old:
                once("runaway", f"KL is running away ({kl_old:.1f} -> {kl_new:.1f} nats) while reward rises: likely "
                                "reward hacking; raise init_kl_coef or lower learning_rate")

    @property
    def run_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir else None

    def log_stats(self, stats: dict, batch: dict | None = None, scores=None) -> None:
        """Keep a step's stats; with `output_dir`, append them to metrics.jsonl and a few
        `batch["query"]`/`batch["response"]` rows with their scores to samples.jsonl."""
        row = {"step": self.step_count}
        for k, v in stats.items():
            if isinstance(v, (torch.Tensor, np.ndarray)) and np.size(v) == 1:
                v = float(v.item() if isinstance(v, torch.Tensor) else v.reshape(()))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = float(v)
        self.history.append(row)
        append_logs(self, row, batch, scores)

    # ------------------------------------------------------------ the whole loop

    def train(self, reward=None, steps: int | None = None) -> list[dict]:
        """Sample, score with `reward(prompts, completions) -> scores`, update; until `steps` steps.

        Writes metrics.jsonl, samples.jsonl, checkpoints every `save_every` steps and
        at the end, and the final model (save_pretrained) to `output_dir/model`."""
        from tqdm.auto import tqdm

        from rlhfkit.data import prompt_text

        steps = steps or self.config.steps
        reward = self._reward(reward)
        if self.queries is None:
            raise UserError("no prompts to train on: pass dataset=... or set prompts in the config")
        main = self.accelerator.is_main_process
        if self.run_dir is not None and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.config, self.run_dir / "config.yaml")
        bar = tqdm(total=steps, initial=self.step_count, desc="ppo", unit="step", disable=not main)
        while self.step_count < steps:
            idx = self._next_indices()
            queries, prompts = [self.queries[i] for i in idx], [prompt_text(self.prompts[i]) for i in idx]
            t = time.time()
            responses = self.generate(queries)
            t_gen = time.time() - t
            texts = [s.strip() for s in self.tokenizer.batch_decode(responses, skip_special_tokens=True)]
            t = time.time()
            with self.accelerator.autocast():  # a model reward runs in the trainer's precision too
                scores = [float(s) for s in reward(prompts, texts)]
            if len(scores) != len(texts):
                raise UserError(f"the reward returned {len(scores)} scores for {len(texts)} completions")
            t_reward = time.time() - t
            stats = self.step(queries, responses, scores)
            stats.update({"time/generate": t_gen, "time/reward": t_reward})
            self.log_stats(stats, {"query": prompts, "response": texts}, scores)
            self._progress(bar, stats, steps)
            if self.config.save_every and self.step_count % self.config.save_every == 0 and self.run_dir:
                self.save(self.run_dir / "checkpoints" / f"step-{self.step_count}")
        bar.close()
        if self.run_dir is not None:
            last = self.run_dir / "checkpoints" / f"step-{self.step_count}"
            if not (last / STATE_FILE).exists():
                self.save(last)
            self.save_pretrained(self.run_dir / "model")
        return self.history

    def _reward(self, reward):
        reward = self.config.reward if reward is None else reward
        if callable(reward):
            return reward
        try:
            from rlhfkit.rewards import get_reward
        except ModuleNotFoundError as e:
            raise UserError(f"reward {reward!r} needs rlhfkit.rewards ({e}); pass a Python function instead") from None
        return get_reward(reward)

    def _next_indices(self) -> list[int]:
        """This process's prompts for the next batch: a stream of per-epoch permutations (seeded)."""
        n, bs = len(self.queries), self.config.batch_size
        start = self.data_position["consumed"] + self.accelerator.process_index * bs
        self.data_position["consumed"] += bs * self.accelerator.num_processes
        out, perms = [], {}
        for p in range(start, start + bs):
            epoch = p // n
            if epoch not in perms:
                g = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
                perms[epoch] = torch.randperm(n, generator=g).tolist()
            out.append(perms[epoch][p % n])
        return out

    def _progress(self, bar, stats: dict, steps: int) -> None:
        reward, kl = stats.get("env/reward_mean", float("nan")), stats.get("objective/kl", float("nan"))
        bar.update(1)
        bar.set_postfix(reward=f"{reward:.3f}", kl=f"{kl:.3f}")
        if self.config.log_every and self.step_count % self.config.log_every == 0 and self.accelerator.is_main_process:
            seconds = stats.get("time/ppo/total", 0.0) + stats.get("time/generate", 0.0) + stats.get("time/reward", 0.0)
            bar.write(f"step {self.step_count}/{steps}  reward {reward:.4f}  kl {kl:.4f}  "
                      f"beta {self.kl_ctl.value:.4f}  len {stats.get('tokens/responses_len_mean', 0):.1f}  {seconds:.1f}s")

    # ------------------------------------------------------------ saving and resuming

    def save_pretrained(self, folder) -> None:
        """The policy for use elsewhere: save_pretrained (the adapter with LoRA), tokenizer, value head."""
        save_final_model(self, folder)

    def save(self, folder) -> Path:
        """A checkpoint that resumes exactly: trainable weights (adapter + value head), optimizer,
        scheduler, KL controller, score statistics, RNG states, data position and metrics so far."""
        return save_checkpoint(self, folder)

    def load_state(self, folder) -> None:
        """Restore everything `save` wrote into this (freshly built) trainer."""
        load_checkpoint(self, folder)

    @classmethod
    def resume(cls, folder, model=None, ref_model=None, tokenizer=None, dataset=None, **overrides) -> "PPOTrainer":
        """Rebuild a trainer from a checkpoint (or a run folder: its latest checkpoint) and restore its state.

        The model is rebuilt from the saved config (`model`, `lora`, ...) unless given;
        when given, pass the same initial model as the first run. `overrides` change
        config fields (e.g. `steps=200`)."""
        from rlhfkit.config import build_config, load_yaml

        folder = find_checkpoint(folder)
        config = build_config(PPOConfig, {**load_yaml(folder / "config.yaml"), **overrides})
        trainer = cls(config, model, ref_model, tokenizer, dataset)
        trainer.load_state(folder)
        return trainer

