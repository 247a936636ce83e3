"""The commands of the online methods (`rlhfkit ppo`, `grpo`, `rloo`): one runner, one flag set per method's config."""

from __future__ import annotations

import math

from rlhfkit.config import add_arguments, build_config


def run_online(trainer_cls, config, overrides: dict | None = None, name: str = "ppo") -> int:
    """Train (or resume: the saved config plus `overrides`, the flags given on the command line)."""
    from dataclasses import fields

    from rlhfkit.errors import UserError

    if config.resume:
        names = {f.name for f in fields(type(config))} - {"resume"}
        overrides = {k: v for k, v in (overrides or {}).items() if k in names}
        trainer = trainer_cls.resume(config.resume, **overrides)
    else:
        if not config.prompts:
            raise UserError("no prompts file; pass --prompts FILE.jsonl (rows like {\"prompt\": \"...\"})")
        trainer = trainer_cls(config)
    trainer.train(trainer.config.reward, trainer.config.steps)
    last = trainer.history[-1] if trainer.history else {}
    out = trainer.config.output_dir
    kl = last.get("objective/kl", float("nan"))
    kl_text = f", kl {kl:.4f}" if trainer.reference is not None and math.isfinite(kl) else ""  # no reference: no KL
    print(f"rlhfkit {name}: {trainer.step_count} steps, reward {last.get('env/reward_mean', float('nan')):.4f}"
          f"{kl_text}; run folder {out} (model in {out}/model)")
    return 0


def add_online_command(subparsers, name: str, help: str, trainer_cls) -> None:
    config_cls = trainer_cls.config_class
    parser = subparsers.add_parser(name, help=help)
    parser.add_argument("--config", help="YAML file of the fields below; flags override it")
    add_arguments(parser, config_cls)
    parser.set_defaults(func=lambda args: run_online(trainer_cls, build_config(config_cls, args, args.config),
                                                     vars(args), name))
