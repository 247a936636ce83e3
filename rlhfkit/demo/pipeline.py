"""`rlhfkit demo`: the whole loop, offline, on the embedded default.

    prompts -> K completions (smollm2-135m) -> rankings (scripted labeler, or a
    human export) -> reward model (minilm-l6, Bradley-Terry) -> PPO with LoRA
    -> evaluation before/after on held-out prompts -> report

Every stage writes into its own folder under `--out` with a `stage.json`
marker holding the settings it ran with; a second run reuses every stage whose
settings (and upstream stages) are unchanged, and `--from STAGE` redoes that
stage and everything after it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from rlhfkit.config import save_yaml
from rlhfkit.demo.config import OFFLINE_METHODS, ONLINE_METHODS, DemoConfig, resolve_preset
from rlhfkit.demo.stages import STAGES, Stages
from rlhfkit.errors import UserError

# ---------------------------------------------------------------- the pipeline


def run_demo(config: DemoConfig) -> dict:
    from rlhfkit.data import load_prompts
    from rlhfkit.demo.report import write_demo_report

    config = resolve_preset(config)
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    save_yaml(config, root / "config.yaml")
    if not 0 < config.reward_cap <= 1:  # checked before any stage runs
        raise UserError(f"--reward-cap {config.reward_cap}: a quantile in (0, 1], e.g. 0.5 (1 = no cap)")
    for method in config.method:
        if method not in ONLINE_METHODS + OFFLINE_METHODS:
            raise UserError(f"demo method {method!r}: choose from {', '.join(ONLINE_METHODS + OFFLINE_METHODS)}")
    if config.from_stage and config.from_stage not in STAGES + tuple(config.method) + ("ppo-direct",):
        raise UserError(f"--from {config.from_stage}: not a stage of this run; stages: generate, label, reward, "
                        f"{', '.join(config.method)}, eval, report")
    stages = Stages(root, config.from_stage, list(config.method) + (["ppo-direct"] if config.direct_reward else []))
    train_prompts = load_prompts(config.train_prompts)
    heldout = load_prompts(config.heldout_prompts)[: config.n_eval_prompts]
    if len(heldout) < config.n_eval_prompts:
        print(f"rlhfkit demo: warning: only {len(heldout)} held-out prompts (asked for {config.n_eval_prompts})")
    common = dict(policy=config.policy, max_new_tokens=config.max_new_tokens, seed=config.seed)

    if config.feedback:
        rankings = _use_feedback(stages, config)
    else:
        label_prompts = train_prompts[: config.n_label_prompts]
        stages.run("generate", {**common, "k": config.k, "prompts": label_prompts, "temperature": config.label_temperature,
                                "top_p": config.label_top_p}, (),
                   lambda f: _generate(f, config, label_prompts))
        stages.run("label", {"labeler": config.labeler, "tie_threshold": config.tie_threshold}, ("generate",), lambda f: _label(f, stages, config))
        rankings = stages.folder("label") / "rankings.jsonl"
    stages.run("reward", {"backbone": config.reward_backbone, "epochs": config.reward_epochs, "lr": config.reward_lr,
                         "seed": config.seed, **_unless_off(ties=(config.reward_ties, "drop"))},
               ("label",), lambda f: _reward(f, config, rankings))
    trained = []
    for method, reward in _method_stages(config, stages):
        if method in OFFLINE_METHODS:
            settings = {"policy": config.policy, "seed": config.seed, "method": method,
                        **{k: getattr(config, k) for k in ("dpo_epochs", "dpo_lr", "dpo_beta")}}
            stages.run(method, settings, ("label",), lambda f: _dpo(f, config, rankings))
            trained.append(method)
            continue
        cap = _score_cap(stages, config, rankings, reward)
        settings = {**common, "method": method, "reward": reward, "num_generations": config.num_generations,
                    "temperature": config.rollout_temperature,
                    **{k: getattr(config, k) for k in ("ppo_steps", "ppo_batch_size", "ppo_lr", "ppo_epochs",
                                                       "init_kl_coef", "mixed_precision")},
                    **_unless_off(entropy_coef=(config.entropy_coef, 0.0), score_cap=(cap, None))}
        # PPO and the group methods see every training prompt, labelled or not
        stages.run(method, settings, ("reward",),
                   lambda f, m=method, r=reward, c=cap: _online(f, config, train_prompts, m, r, c))
        trained.append(method)
    stages.run("eval", {**common, "n": len(heldout), "samples": config.eval_samples, "methods": trained,
                        "temperature": config.eval_temperature, "top_p": config.eval_top_p,
                        "scores": ["toxicity", "vader"]}, tuple(trained),
               lambda f: _evaluate(f, stages, config, heldout, trained))
    if config.compress:
        suite = _compress_suite(config)
        stages.run("compress", {"suite": asdict(suite), "teacher": trained[0]}, (trained[0],),
                   lambda f: _compress(f, stages, trained[0], suite))
    stages.run("report", {"compress": config.compress}, ("eval",) + (("compress",) if config.compress else ()),
               lambda f: write_demo_report(f, stages, config, trained))
    result = json.loads((stages.folder("eval") / "eval.json").read_text())
    from rlhfkit.evaluation.summary import format_summary

    print(format_summary(result))
    export_final_model(stages, result, trained[0])
    print("rlhfkit demo: stage times: " + ", ".join(f"{s} {t:.0f}s" for s, t in stages.timings.items()))
    print(f"rlhfkit demo: report: {stages.folder('report') / 'report.html'}")
    return result


def export_final_model(stages: Stages, result: dict, method: str = "ppo") -> Path:
    """The first method's tuned policy as a plain transformers folder, `OUT/model` (adapter merged,
    value head dropped), whose model card carries its before/after evaluation:
    `pipeline("text-generation", model=OUT/model)` loads it with no rlhfkit."""
    from rlhfkit.models.card import evaluation_rows
    from rlhfkit.models.export import export_model

    name = (result.get("methods") or {}).get(method, method)  # its name in the evaluation ("after" for ppo)
    rows = [r for r in evaluation_rows(result) if r.get("model") == name]
    out = export_model(stages.folder(method) / "model", stages.root / "model", merge=True, evaluation=rows,
                       evaluation_title=f"Evaluation (held-out prompts, before vs after {method})")
    print(f"rlhfkit demo: plain transformers model (loads without rlhfkit): {out}")
    return out


def _use_feedback(stages: Stages, config: DemoConfig) -> Path:
    from rlhfkit.data import load_rankings

    path = Path(config.feedback)
    rankings = load_rankings(path)  # validate before any training
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    stages.keys["generate"] = digest
    stages.run("label", {"feedback": str(path), "sha": digest}, ("generate",), lambda f: None)
    print(f"rlhfkit demo: using {len(rankings)} human rankings from {path}")
    return path


def _generate(folder: Path, config: DemoConfig, prompts) -> None:
    from rlhfkit.datafiles import write_jsonl
    from rlhfkit.data import prompt_to_json
    from rlhfkit.models.generation import GenerationSettings, generate_completions
    from rlhfkit.models import load_policy

    policy = load_policy(config.policy)
    completions = generate_completions(
        policy.model, policy.tokenizer, prompts, n=config.k, batch_size=64, seed=config.seed,
        settings=GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.label_temperature,
                                    top_p=config.label_top_p),
    )
    write_jsonl(folder / "completions.jsonl",
                [{**prompt_to_json(p), "completions": c, "model": config.policy} for p, c in zip(prompts, completions)])


def _label(folder: Path, stages: Stages, config: DemoConfig) -> None:
    from rlhfkit.datafiles import write_jsonl
    from rlhfkit.labeling import _read_completion_rows, script_label

    rows = _read_completion_rows(stages.folder("generate") / "completions.jsonl")
    records, stats = script_label(rows, config.labeler, tie_threshold=config.tie_threshold, seed=config.seed)
    write_jsonl(folder / "rankings.jsonl", records)
    (folder / "label_stats.json").write_text(json.dumps(stats, indent=1))
    print(f"rlhfkit demo: {stats['rows']} rankings, {stats['pairs']} pairs (labeler {config.labeler})")


def _reward(folder: Path, config: DemoConfig, rankings: Path) -> None:
    from rlhfkit.methods.reward import RewardConfig, train_reward_model

    result = train_reward_model(RewardConfig(
        model=config.reward_backbone, data=str(rankings), output_dir=str(folder / "model"), epochs=config.reward_epochs,
        learning_rate=config.reward_lr, ties=config.reward_ties, seed=config.seed, mixed_precision="no",
        report_to="tensorboard",
    ))
    (folder / "reward_result.json").write_text(json.dumps(result, indent=1, default=str))


def _method_stages(config: DemoConfig, stages: Stages) -> list[tuple[str, str]]:
    """(stage name, reward spec) of each method this run trains: the reward model, or the direct reward."""
    model = str(stages.folder("reward") / "model")
    out = [(m, model) for m in config.method]
    return out + ([("ppo-direct", config.direct_reward)] if config.direct_reward else [])


def _score_cap(stages: Stages, config: DemoConfig, rankings: Path, reward: str) -> float | None:
    """The `reward_cap` quantile of the reward model's scores on the first 512 ranked completions (samples
    of the reference policy), scored once and kept in reward/reference_scores.json; None for no cap
    (quantile 1) or a direct reward."""
    import torch

    if config.reward_cap == 1 or reward != str(stages.folder("reward") / "model"):
        return None
    path = stages.folder("reward") / "reference_scores.json"
    key = stages.keys["reward"]
    if not path.exists() or json.loads(path.read_text()).get("reward_key") != key:
        from rlhfkit.data import load_rankings
        from rlhfkit.rewards import get_reward

        pairs = [(r.prompt, c) for r in load_rankings(rankings) for c in r.completions][:512]
        scores = get_reward(reward)([p for p, _ in pairs], [c for _, c in pairs])
        path.write_text(json.dumps({"reward_key": key, "scores": scores}))
    scores = torch.tensor(json.loads(path.read_text())["scores"])
    return round(float(torch.quantile(scores, config.reward_cap)), 4)


def _online(folder: Path, config: DemoConfig, prompts, method: str, reward: str, score_cap: float | None) -> None:
    """One online method on the policy with LoRA; `ppo-direct` is PPO on a reward spec, no reward model."""
    from rlhfkit.methods.grpo import GRPOConfig, GRPOTrainer
    from rlhfkit.methods.ppo import PPOConfig, PPOTrainer
    from rlhfkit.methods.rloo import RLOOConfig, RLOOTrainer

    trainer_cls, config_cls = {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig)}.get(
        method, (PPOTrainer, PPOConfig))
    fields = dict(model=config.policy, lora=True, output_dir=str(folder), steps=config.ppo_steps,
                  batch_size=config.ppo_batch_size, learning_rate=config.ppo_lr, max_new_tokens=config.max_new_tokens,
                  temperature=config.rollout_temperature,
                  mixed_precision=config.mixed_precision, entropy_coef=config.entropy_coef, seed=config.seed,
                  save_every=10, normalize_scores=True, score_cap=score_cap,
                  report_to="tensorboard")
    if trainer_cls is PPOTrainer:
        fields.update(mini_batch_size=max(1, config.ppo_batch_size // 2), ppo_epochs=config.ppo_epochs,
                      init_kl_coef=config.init_kl_coef, adaptive_kl=False)
    else:  # a group of samples per prompt, one on-policy update per batch, the KL in the reward (rloo) or none
        fields.update(num_generations=config.num_generations, mini_batch_size=config.ppo_batch_size,
                      gradient_accumulation_steps=max(1, config.ppo_batch_size // 8))
        if method == "rloo":
            fields.update(init_kl_coef=config.init_kl_coef)
    trainer_cls(config_cls(**fields), dataset=prompts).train(reward)


def _dpo(folder: Path, config: DemoConfig, rankings: Path) -> None:
    """DPO with LoRA on the rankings' pairs (N choose 2 per prompt, ties dropped), the reference the
    policy with its adapters off; the adapter in `dpo/model`, like the online methods'."""
    import shutil

    from rlhfkit.methods.dpo import DPOConfig, train_dpo

    train_dpo(DPOConfig(model=config.policy, data=str(rankings), output_dir=str(folder / "model"), lora=True,
                        epochs=config.dpo_epochs, learning_rate=config.dpo_lr, beta=config.dpo_beta, batch_size=16,
                        max_length=256, seed=config.seed, report_to="tensorboard"))
    shutil.copy(folder / "model" / "metrics.jsonl", folder / "metrics.jsonl")  # where the report reads a method's


def _evaluate(folder: Path, stages: Stages, config: DemoConfig, prompts, methods: list[str]) -> None:
    """Held-out prompts: before (adapters off) against each tuned adapter on the same base. The first
    method is "after"; the others keep their names."""
    from rlhfkit.evaluation import WithoutAdapters, evaluate, save_json
    from rlhfkit.models import load_policy
    from rlhfkit.models.generation import GenerationSettings

    names = {m: ("after" if i == 0 else m) for i, m in enumerate(methods)}
    policies = {m: load_policy(str(stages.folder(m) / "model")) for m in methods}
    models = {"before": WithoutAdapters(policies[methods[0]]), **{names[m]: p for m, p in policies.items()}}
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens, temperature=config.eval_temperature,
                                  top_p=config.eval_top_p)
    result = evaluate(models, prompts, ["toxicity", "vader"], n_samples_per_prompt=config.eval_samples,
                      baseline_name="before", settings=settings, seed=config.seed, batch_size=64)
    result["models"] = {"before": f"{config.policy} (adapters off)",
                        **{names[m]: f"{m}: {stages.folder(m) / 'model'}" for m in methods}}
    result["methods"] = names
    save_json(result, folder / "eval.json")


def _unless_off(**settings) -> dict:
    """{name: value} for the settings (value, off) not at their off value: a setting added later stays out
    of a stage's key while it is off, so run folders made before it existed are still reused."""
    return {name: value for name, (value, off) in settings.items() if value != off}


# ---------------------------------------------------------------- compression (--compress)


def _compress_suite(config: DemoConfig):
    from rlhfkit.methods.compress import CompressSuite

    if config.preset == "quick":
        return CompressSuite(distill_rows=16, distill_epochs=1, distill_batch_size=8, distill_max_new_tokens=8,
                             n_calibration=16, n_prompts=8, max_new_tokens=8, seed=config.seed)
    return CompressSuite(seed=config.seed, max_new_tokens=config.max_new_tokens)


def _compress(folder: Path, stages: Stages, method: str, suite) -> None:
    """The first method's tuned model (its adapter, merged on the fly) compressed every way, then measured."""
    from rlhfkit.methods.compress import run_suite

    run_suite(str(stages.folder(method) / "model"), folder, suite)
