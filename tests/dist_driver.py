"""Runs trainers for the multi-process tests (tests/test_distributed.py): `accelerate launch ... dist_driver.py SPEC.json`.

SPEC: {"jobs": [{"kind": "sft" | "reward" | "dpo" | "ppo" | "grpo" | "rloo", "out": folder, "config": {...},
"zero_dropout": bool, "stop_before_step": k, "hard_stop": bool, "expect_error": bool}]}, run in order
by every process. `stop_before_step` stops the run when step k is about to start (a checkpoint
holds an earlier step): on every process at once (the next job then runs), or with `hard_stop` by
killing process 1 outright, as a crash or a lost node would, so that the launcher must take the run
down (the test checks it does not hang). `expect_error`: the job must fail with a UserError on every
process; its message goes to OUT/error_rank{R}.txt. The same functions run the 1-process references
in the test process itself (`run_job`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


class Stop(Exception):
    pass


PROMPTS = ["Hello there", "The quick brown fox", "Good morning", "Thank you so much", "I think you are",
           "What a terrible", "My neighbour plays", "Please be kind", "Could you write", "We should talk"]


def e_share(prompts, completions):
    """A deterministic reward: the share of the letter e."""
    return [c.count("e") / max(len(c), 1) for c in completions]


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _zero_dropout(model) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def fixed_responses(trainer, queries):
    """Responses that depend only on each row's place in the global prompt stream (and the step), not on
    which process samples them or with what batch: 1 to max_new_tokens random tokens, EOS on some."""
    import zlib

    out, stream = [], trainer.stream
    start = stream.position["consumed"] - stream.per_batch * stream.world + stream.rank * stream.per_batch
    vocab = len(trainer.tokenizer)
    for i, q in enumerate(queries):
        q = q.tolist() if isinstance(q, torch.Tensor) else list(q)
        where = [start + i // stream.g, i % stream.g, trainer.step_count, q]
        g = torch.Generator().manual_seed(zlib.crc32(json.dumps(where).encode()))
        n = int(torch.randint(1, trainer.config.max_new_tokens + 1, (1,), generator=g))
        tokens = torch.randint(5, vocab, (n,), generator=g)
        if n < trainer.config.max_new_tokens:
            tokens[-1] = trainer.tokenizer.eos_token_id
        out.append(tokens)
    return out


def _force_fsdp2(undo: list) -> None:
    """FSDP2 on the CPU, for the test only: accelerate 1.16 enables FSDP on GPU-type devices alone, but
    torch's fully_shard runs on gloo; this sets the state `accelerate launch` with configs/accelerate/
    fsdp2.yaml would set on GPUs, so the loops' FSDP paths (sharded checkpoints, gathered saves) run here."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from rlhfkit.training.runtime import Runtime

    init = Runtime.__init__

    def patched(self, *a, **k):
        init(self, *a, **k)
        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type="SHARDED_STATE_DICT",
            reshard_after_forward=True)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        state.distributed_type = DistributedType.FSDP

    Runtime.__init__ = patched

    def restore():
        Runtime.__init__ = init
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU

    undo.append(restore)


def _patch(job: dict):
    """Dropout off (each process draws its own masks, so only a dropout-free network compares across
    world sizes), fixed responses (sampling draws differ with the batch's shape and the process's
    stream), and the stop; returns a function that undoes them."""
    from rlhfkit.training.online import OnlineTrainer
    from rlhfkit.training.supervised import SupervisedLoop

    undo = []
    stop = job.get("stop_before_step")
    hard = job.get("hard_stop", False)

    def stop_now():
        if hard and rank() == 1:
            os._exit(137)  # a crash: no clean-up, no message, the launcher must notice
        if not hard:
            raise Stop()

    if job.get("zero_dropout"):
        init = SupervisedLoop.__init__

        def patched_init(self, model, *a, **k):
            _zero_dropout(model)
            init(self, model, *a, **k)

        SupervisedLoop.__init__ = patched_init
        undo.append(lambda: setattr(SupervisedLoop, "__init__", init))
    if job.get("force_fsdp2"):
        _force_fsdp2(undo)
    if job.get("fixed_responses"):
        generate = OnlineTrainer.generate
        OnlineTrainer.generate = lambda self, queries, **k: fixed_responses(self, queries)
        undo.append(lambda: setattr(OnlineTrainer, "generate", generate))
    if stop:
        train_step = SupervisedLoop.train_step

        def patched_train_step(self, task, indices):
            if self.step == stop - 1:
                stop_now()
            return train_step(self, task, indices)

        SupervisedLoop.train_step = patched_train_step
        undo.append(lambda: setattr(SupervisedLoop, "train_step", train_step))
        step = OnlineTrainer.step

        def patched_step(self, *a, **k):
            if self.step_count == stop - 1:
                stop_now()
            return step(self, *a, **k)

        OnlineTrainer.step = patched_step
        undo.append(lambda: setattr(OnlineTrainer, "step", step))
    return lambda: [u() for u in reversed(undo)]


def run_job(job: dict) -> None:
    from rlhfkit.errors import UserError

    config = {k: (v.replace("{rank}", str(rank())) if isinstance(v, str) else v) for k, v in job["config"].items()}
    config["output_dir"] = job["out"]
    undo = _patch(job)
    try:
        _train(job["kind"], config)
    except Stop:
        pass
    except UserError as e:
        if not job.get("expect_error"):
            raise
        Path(job["out"]).mkdir(parents=True, exist_ok=True)
        (Path(job["out"]) / f"error_rank{rank()}.txt").write_text(str(e))
    else:
        if job.get("expect_error"):
            raise AssertionError(f"{job['kind']} job {job['out']} was expected to fail")
    finally:
        undo()


def _train(kind: str, config: dict) -> None:
    if kind == "sft":
        from rlhfkit.methods.sft import SFTConfig, train_sft

        train_sft(SFTConfig(**config), progress=False)
    elif kind == "reward":
        from rlhfkit.methods.reward import RewardConfig, train_reward_model

        train_reward_model(RewardConfig(**config), progress=False)
    elif kind == "dpo":
        from rlhfkit.methods.dpo import DPOConfig, train_dpo

        train_dpo(DPOConfig(**config), progress=False)
    else:
        from rlhfkit.methods.grpo import GRPOTrainer
        from rlhfkit.methods.ppo import PPOTrainer
        from rlhfkit.methods.rloo import RLOOTrainer

        cls = {"ppo": PPOTrainer, "grpo": GRPOTrainer, "rloo": RLOOTrainer}[kind]
        if config.pop("resume", False):
            from rlhfkit.training.supervised import latest_checkpoint

            trainer = cls.resume(latest_checkpoint(config["output_dir"]))
        else:
            trainer = cls(cls.config_class(**config))
        trainer.train(e_share)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    for job in spec["jobs"]:
        run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
