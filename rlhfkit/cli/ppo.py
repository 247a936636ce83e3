"""`rlhfkit ppo --config ppo.yaml`: PPO on a policy with any reward source (flags override the YAML)."""

from __future__ import annotations

from rlhfkit.config import add_arguments, build_config


def run_ppo(config, overrides: dict | None = None) -> int:
    """Train (or resume: the saved config plus `overrides`, the flags given on the command line)."""
    from rlhfkit.errors import UserError
    from rlhfkit.methods.ppo import PPOTrainer

    if config.resume:
        from dataclasses import fields

        names = {f.name for f in fields(type(config))} - {"resume"}
        overrides = {k: v for k, v in (overrides or {}).items() if k in names}
        trainer = PPOTrainer.resume(config.resume, **overrides)
    else:
        if not config.prompts:
            raise UserError("no prompts file; pass --prompts FILE.jsonl (rows like {\"prompt\": \"...\"})")
        trainer = PPOTrainer(config)
    from rlhfkit.rewards import get_reward

    reward = get_reward(trainer.config.reward)
    trainer.train(reward, trainer.config.steps)
    last = trainer.history[-1] if trainer.history else {}
    out = trainer.config.output_dir
    print(f"rlhfkit ppo: {trainer.step_count} steps, reward {last.get('env/reward_mean', float('nan')):.4f}, "
          f"kl {last.get('objective/kl', float('nan')):.4f}; run folder {out} (model in {out}/model)")
    return 0


def add_command(subparsers) -> None:
    from rlhfkit.methods.ppo import PPOConfig

    parser = subparsers.add_parser("ppo", help="PPO with a KL leash: causal or seq2seq, LoRA, any reward; resumable")
    parser.add_argument("--config", help="YAML file of the fields below; flags override it")
    add_arguments(parser, PPOConfig)
    parser.set_defaults(func=lambda args: run_ppo(build_config(PPOConfig, args, args.config), vars(args)))
