"""The online loop: sample, score, build experience, estimate advantages, update; for every online method.

Step-wise API (keep your own loop):

    trainer = OnlineTrainer(config, model, tokenizer=tokenizer, dataset=prompts)
    responses = trainer.generate(query_tensors)
    stats = trainer.step(query_tensors, responses, scores)
    trainer.log_stats(stats, {"query": prompts, "response": texts}, scores)

or the whole loop: `trainer.train(reward, steps)`. A method is a config: the advantage
estimator, policy loss, loss aggregation and KL placement are chosen by name
(`OnlineConfig`); PPO is `advantage_estimator="gae"` with a critic (value head) and
the KL in the reward. Devices, precision, backward and metric gathering go through
accelerate (`Runtime`), so `accelerate launch` scales the same loop out.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import save_yaml
from rlhfkit.errors import UserError
from rlhfkit.models.generation import GenerationSettings, sample, static_cache_kwargs
from rlhfkit.models.reference import Reference
from rlhfkit.models.speed import SpeedSettings, apply_speed_settings, checkpoint_activations, compile_layers
from rlhfkit.models.value_head import ModelWithValueHead
from rlhfkit.ops.kl import kl_controller
from rlhfkit.ops.masked import RunningMoments
from rlhfkit.training import experience, monitor, tracking
from rlhfkit.training.checkpoint import STATE_FILE, RunLog, find_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.training.online_config import OnlineConfig
from rlhfkit.training.prompts import PromptStream, load_prompt_dataset
from rlhfkit.training.runtime import Runtime, agree, everywhere, make_optimizer
from rlhfkit.training.update import optimise


def _ids(x) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else [int(t) for t in x]


class OnlineTrainer:
    """The online loop over a `ModelWithValueHead` (built from `model` when it is a plain LM or a name)."""

    config_class = OnlineConfig

    def __init__(self, config: OnlineConfig, model=None, ref_model=None, tokenizer=None, dataset=None, optimizer=None):
        from accelerate.utils import set_seed

        from rlhfkit.models.card import check_push

        config.validate()
        check_push(config.push_to_hub)  # before any training, not after it
        self.config = config
        set_seed(config.seed)
        self.runtime = Runtime(config.mixed_precision, **tracking.accelerator_kwargs(config, config.output_dir))
        model, self.tokenizer = _load_model(config, model, tokenizer)
        self.seq2seq, self.critic = model.is_encoder_decoder, config.uses_critic
        if not self.critic:
            model.v_head.requires_grad_(False)
        # the reference before anything changes the policy: a frozen copy starts from the same weights
        needs_ref = config.kl_penalty != "none"
        self.reference = Reference.for_policy(model.pretrained_model, given=ref_model) if needs_ref else None
        params = [p for p in model.parameters() if p.requires_grad]
        self.model, self.optimizer = self.runtime.prepare_model_and_optimizer(
            model, optimizer or make_optimizer(params, config.learning_rate, config.weight_decay))
        self.model.eval()  # dropout off while sampling and training
        if self.reference is not None:
            self.reference.to(self.runtime.device)
            if self.reference.kind == "adapters_off":
                self.reference.network = self.model
        # speed settings now that every model is on its device (a GPU keeps SDPA / flash attention)
        speed = SpeedSettings(config.mixed_precision, config.attn_implementation, self.unwrapped.is_peft_model)
        apply_speed_settings(self.unwrapped.pretrained_model, "policy", speed)
        if self.reference is not None and self.reference.separate:
            apply_speed_settings(self.reference.network, "reference", speed)
        self._cache_kwargs = static_cache_kwargs(model.pretrained_model) if config.static_cache else {}
        self._checkpointed = _training_pass_settings(model, config, self._batches([[0, 1]], [[1, 0]])([0]), self.runtime)
        self.scheduler = None
        if config.lr_schedule == "linear":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                getattr(self.optimizer, "optimizer", self.optimizer), lambda s: max(0.0, 1.0 - s / config.steps))
        self.kl_ctl = kl_controller(config.init_kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon)
        self.score_stats = RunningMoments()
        self.step_count, self.skipped_steps, self.bad_in_row = 0, 0, 0
        self.history: list[dict] = []
        self.minibatch_stats: list[dict] = []
        self.warned: set[str] = set()
        self.trend: list[dict] = []
        self.log = RunLog(self.run_dir, self.runtime.is_main_process, config.samples_per_step)
        self.prompts, self.queries = everywhere(lambda: load_prompt_dataset(config, self.tokenizer, dataset), "prompts")
        self.stream = PromptStream(len(self.queries or []) or 1, config.batch_size, config.num_generations, config.seed,
                                   self.runtime.process_index, self.runtime.num_processes)
        if self.runtime.num_processes > 1:  # each process samples its share of prompts from a stream of its own
            set_seed(config.seed + self.runtime.process_index)
        tracking.start(self.runtime, config, config.output_dir, self.progress_name)

    # ------------------------------------------------------------ parts

    @property
    def accelerator(self) -> Runtime:
        """The run's accelerate runtime (an `Accelerator` plus the run's own precision)."""
        return self.runtime

    @property
    def unwrapped(self) -> ModelWithValueHead:
        return self.runtime.unwrap_model(self.model)

    @property
    def ref_model(self):
        """The separate reference network (a frozen copy or the given model), None with adapters off or no KL."""
        return self.reference.network if self.reference is not None and self.reference.separate else None

    @property
    def run_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir else None

    def _batches(self, queries, responses) -> experience.BatchMaker:
        return experience.BatchMaker.for_model(queries, responses, self.tokenizer, self.unwrapped.pretrained_model,
                                               self.seq2seq, self.runtime.device)

    def generate(self, query_tensors, **generation_kwargs) -> list[torch.Tensor]:
        """Sample one response per query (response tokens only, up to and including EOS).

        `generation_kwargs` override the config's generation fields (max_new_tokens,
        temperature, top_k, top_p, min_new_tokens); other keys go to HF `generate`.
        """
        settings = GenerationSettings.of(self.config)
        extra = dict(self._cache_kwargs)
        for key, value in generation_kwargs.items():
            if hasattr(settings, key):
                setattr(settings, key, int(value) if key == "top_k" else value)
            else:
                extra[key] = value
        if settings.temperature != self.config.temperature:
            monitor.warn_once(self, "temperature", "generate(temperature=...) differs from config.temperature, "
                                                   "which step() uses for log-probs")
        queries = [_ids(q) for q in (query_tensors if not isinstance(query_tensors, torch.Tensor) or query_tensors.dim() > 1
                                     else [query_tensors])]
        size = self.config.generation_batch_size or self.config.batch_size
        model = self.unwrapped.pretrained_model
        out: list[torch.Tensor] = []
        with self.runtime.autocast():
            for i in range(0, len(queries), size):
                for r in sample(model, self.tokenizer, queries[i:i + size], settings, **extra):
                    out.append(torch.tensor(r if r else [self.tokenizer.eos_token_id], dtype=torch.long))
        return out

    # ------------------------------------------------------------ one step

    def step(self, queries, responses, scores, group_ids=None) -> dict:
        """One update from queries, their responses (token ids) and one score each; returns stats.

        `group_ids` [B] marks the samples of one prompt (group-relative estimators); default:
        consecutive runs of `num_generations` sequences.
        """
        t0 = time.time()
        queries, responses = [_ids(q) for q in queries], [_ids(r) for r in responses]
        scores = torch.as_tensor([float(s) for s in scores], dtype=torch.float32)
        if not (len(queries) == len(responses) == len(scores)) or not queries:
            raise UserError(f"step() needs as many queries, responses and scores ({len(queries)}, {len(responses)}, {len(scores)})")
        if any(len(r) == 0 for r in responses):
            raise UserError("step() got an empty response; every response needs at least one token (e.g. EOS)")
        if group_ids is None:
            group_ids = torch.arange(len(queries)) // self.config.num_generations
        group_ids = torch.as_tensor(group_ids)
        if not torch.isfinite(scores).all():
            return monitor.skip(self, "non-finite reward", queries)
        raw_scores = scores.clone()
        for layer in self._checkpointed:  # in case something switched the model to eval since
            layer.training = True
        c = self.config
        scores = experience.process_scores(scores, responses, c, self.tokenizer.eos_token_id, self.score_stats, self.runtime)
        perms = [experience.permutation(c.seed, self.step_count, len(queries), e) for e in range(c.ppo_epochs)]
        batches = self._batches(queries, responses)
        data = experience.rollout(self.model, self.reference, batches, perms[0], c, self.runtime,
                                  with_reference=self.reference is not None)
        t1 = time.time()
        data.update(experience.advantages(data, scores, c, self.kl_ctl.value, group_ids, self.runtime.reduce_sum))
        if c.mask_truncated_completions:
            experience.truncated_out_of_loss(data, responses, self.tokenizer.eos_token_id, c.max_new_tokens)
        train = optimise(self, batches, data, perms)
        if train is None:
            return monitor.skip(self, "non-finite loss", queries)
        t2 = time.time()
        stats = monitor.step_stats(self, data, scores, raw_scores, queries, responses, train, group_ids)
        stats.update({"time/ppo/forward_pass": t1 - t0, "time/ppo/optimize_step": t2 - t1,
                      "time/ppo/train_passes": self.pass_seconds, "time/ppo/total": time.time() - t0})
        if "objective/kl" in stats:
            self.kl_ctl.update(stats["objective/kl"], len(queries) * self.runtime.num_processes)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step_count += 1
        self.bad_in_row = 0
        monitor.check(self, stats)
        return stats

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
        self.log.append(row, self.step_count, batch, scores)
        tracking.log(self.runtime, row, self.step_count)

    # ------------------------------------------------------------ the whole loop

    def train(self, reward=None, steps: int | None = None) -> list[dict]:
        """Sample, score with `reward(prompts, completions) -> scores`, update; until `steps` steps.

        Writes metrics.jsonl, samples.jsonl, checkpoints every `save_every` steps and
        at the end, and the final model (save_pretrained) to `output_dir/model`."""
        from tqdm.auto import tqdm

        from rlhfkit.data import prompt_text

        import hashlib
        import json

        steps = steps or self.config.steps
        reward = everywhere(lambda: self._reward(reward), "reward")
        if self.queries is None:
            raise UserError("no prompts to train on: pass dataset=... or set prompts in the config")
        # every process must start from the same step on the same prompts, or the collectives pair up wrongly
        agree({"start step": self.step_count, "steps": steps, "prompts": len(self.queries),
               "digest": hashlib.sha256(json.dumps(self.queries).encode()).hexdigest()[:12]}, "the training run")
        main = self.runtime.is_main_process
        if self.run_dir is not None and main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(self.config, self.run_dir / "config.yaml")
        bar = tqdm(total=steps, initial=self.step_count, desc=self.progress_name, unit="step", disable=not main)
        while self.step_count < steps:
            idx = self.stream.next()
            queries, prompts = [self.queries[i] for i in idx], [prompt_text(self.prompts[i]) for i in idx]
            t = time.time()
            responses = self.generate(queries)
            t_gen = time.time() - t
            texts = [s.strip() for s in self.tokenizer.batch_decode(responses, skip_special_tokens=True)]
            t = time.time()
            with self.runtime.autocast():  # a model reward runs in the trainer's precision too
                scores = [float(s) for s in reward(prompts, texts)]
            if len(scores) != len(texts):
                raise UserError(f"the reward returned {len(scores)} scores for {len(texts)} completions")
            t_reward = time.time() - t
            stats = self.step(queries, responses, scores)
            stats.update({"time/generate": t_gen, "time/reward": t_reward})
            for name, values in getattr(reward, "last_parts", {}).items():  # the parts of a weighted sum
                stats[f"rewards/{name}/mean"] = float(np.mean(values))
            self.log_stats(stats, {"query": prompts, "response": texts}, scores)
            monitor.progress(self, bar, stats, steps)
            if self.config.save_every and self.step_count % self.config.save_every == 0 and self.run_dir:
                self.save(self.run_dir / "checkpoints" / f"step-{self.step_count}")
        bar.close()
        if self.run_dir is not None:
            last = self.run_dir / "checkpoints" / f"step-{self.step_count}"
            if not (last / STATE_FILE).exists():
                self.save(last)
            self.save_pretrained(self.run_dir / "model")
            if self.config.push_to_hub and main:
                from rlhfkit.models.card import push_folder

                print(f"rlhfkit {self.progress_name}: pushed to {push_folder(self.run_dir / 'model', self.config.push_to_hub)}")
        tracking.finish(self.runtime)
        return self.history

    progress_name = "online"

    def _reward(self, reward):
        from rlhfkit.rewards import get_reward

        reward = self.config.reward if reward is None else reward
        return reward if callable(reward) else get_reward(reward)

    # ------------------------------------------------------------ saving and resuming

    def save_pretrained(self, folder) -> None:
        """The policy for use elsewhere: save_pretrained (the adapter with LoRA), tokenizer, value head."""
        self.runtime.wait_for_everyone()
        full = self.runtime.full_state_dict(self.model)  # FSDP / DeepSpeed: gathered from every process
        if self.runtime.is_main_process:
            from rlhfkit.models.card import write_model_card

            if full is None:
                self.unwrapped.save_pretrained(folder, with_value_head=self.critic)
            else:
                _save_gathered(self.unwrapped, full, folder, self.critic)
            self.tokenizer.save_pretrained(str(folder))
            last = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                    if k in ("step", "env/reward_mean", "objective/kl", "ppo/loss/total", "tokens/responses_len_mean")}
            write_model_card(folder, method=self.progress_name, base_model=self.config.model, config=self.config,
                             datasets=[self.config.prompts] if isinstance(self.config.prompts, str) else [],
                             metrics=last, repo_id=self.config.push_to_hub,
                             notes="The value head (critic) is saved beside the policy as value_head.safetensors; "
                                   "`rlhfkit export` drops it." if self.critic else "")

    def state_dict(self) -> dict:
        """The loop's own state (what a checkpoint needs beyond weights, optimizer and RNGs)."""
        return {"step": self.step_count, "skipped_steps": self.skipped_steps, "bad_in_row": self.bad_in_row,
                "kl_ctl": self.kl_ctl.state_dict(), "score_stats": self.score_stats.state_dict(),
                "data_position": self.stream.position, "history": self.history, "trend": self.trend,
                "warned": sorted(self.warned)}

    def save(self, folder) -> Path:
        """A checkpoint that resumes exactly: trainable weights (adapter + value head), optimizer,
        scheduler, KL controller, score statistics, RNG states, data position and metrics so far."""
        return save_checkpoint(folder, self.runtime, self.config, self.unwrapped, self.optimizer, self.scheduler,
                               self.state_dict())

    def load_state(self, folder) -> None:
        """Restore everything `save` wrote into this (freshly built) trainer."""
        state = load_checkpoint(folder, self.runtime, self.unwrapped, self.optimizer, self.scheduler)
        self.step_count, self.skipped_steps, self.bad_in_row = state["step"], state["skipped_steps"], state["bad_in_row"]
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.score_stats.load_state_dict(state["score_stats"])
        self.stream.position, self.history, self.trend = state["data_position"], state["history"], state["trend"]
        self.warned = set(state["warned"])
        self.log.rewind(self.history, self.step_count)

    @classmethod
    def resume(cls, folder, model=None, ref_model=None, tokenizer=None, dataset=None, **overrides):
        """Rebuild a trainer from a checkpoint (or a run folder: its latest checkpoint) and restore its state.

        The model is rebuilt from the saved config (`model`, `lora`, ...) unless given;
        when given, pass the same initial model as the first run. `overrides` change
        config fields (e.g. `steps=200`)."""
        from rlhfkit.config import build_config, load_yaml

        folder = find_checkpoint(folder)
        config = build_config(cls.config_class, {**load_yaml(folder / "config.yaml"), **overrides})
        trainer = cls(config, model, ref_model, tokenizer, dataset)
        trainer.load_state(folder)
        return trainer


def _save_gathered(model: ModelWithValueHead, state: dict, folder, with_value_head: bool) -> None:
    """save_pretrained from a gathered state dict (`pretrained_model.*` and `v_head.*` keys)."""
    from safetensors.torch import save_file

    from rlhfkit.models.value_head import VALUE_HEAD_FILE

    Path(folder).mkdir(parents=True, exist_ok=True)
    inner = {k[len("pretrained_model."):]: v for k, v in state.items() if k.startswith("pretrained_model.")}
    model.pretrained_model.save_pretrained(str(folder), state_dict=inner)
    if with_value_head:
        head = {k[len("v_head."):]: v.contiguous().cpu() for k, v in state.items() if k.startswith("v_head.")}
        save_file(head, str(Path(folder) / VALUE_HEAD_FILE))


# ---------------------------------------------------------------- setup


def _training_pass_settings(model: ModelWithValueHead, config: OnlineConfig, probe, runtime) -> list:
    """compile or activation checkpointing of the policy's training passes (after the reference copy,
    which stays eager); returns the checkpointed layers."""
    checkpointed = []
    if config.compile:
        # with gradient_checkpointing the compiler recomputes activations itself: torch.compile skips
        # layers under transformers' checkpointing, and its own recomputation is fused
        compile_layers(model.pretrained_model, memory_budget=0.0 if config.gradient_checkpointing else None)
    elif config.gradient_checkpointing:
        checkpointed = checkpoint_activations(model.pretrained_model)
    if config.gradient_checkpointing:
        # the response logits and their gradient are the training pass's largest tensors: recompute
        # them in row chunks too, where the model's logits are exactly its linear head's output
        with runtime.autocast():
            model.chunked_head = model.head_is_last_op(**probe.inputs)
    return checkpointed


def _load_model(config: OnlineConfig, model, tokenizer):
    from rlhfkit.models import LoraOptions, load_policy

    if model is None or isinstance(model, str):
        lora = LoraOptions.of(config)
        dtype = config.dtype
        if lora and config.mixed_precision == "bf16" and dtype in ("float32", "fp32"):
            dtype = "bfloat16"  # the frozen base is only read in bf16; adapters stay float32 (peft)
        policy = load_policy(model or config.model, lora=lora, dtype=dtype)
        model, tokenizer = policy.model, tokenizer or policy.tokenizer
    if not isinstance(model, ModelWithValueHead):
        model = ModelWithValueHead(model)
    if tokenizer is None:
        raise UserError("the trainer got a model object but no tokenizer; pass tokenizer=...")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
