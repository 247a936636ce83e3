"""One config vocabulary across commands; the old names still work everywhere, with a notice."""

import dataclasses

import pytest

from rlhfkit.cli import build_parser
from rlhfkit.config import build_config
from rlhfkit.methods.ppo import PPOConfig
from rlhfkit.methods.reward import RewardConfig
from rlhfkit.methods.sft import SFTConfig


def fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_every_trainer_speaks_the_same_names():
    shared = {"model", "output_dir", "learning_rate", "weight_decay", "max_grad_norm", "gradient_accumulation_steps",
              "mixed_precision", "seed"}
    for cls in (SFTConfig, RewardConfig, PPOConfig):
        assert shared <= fields(cls), (cls.__name__, shared - fields(cls))
    lora = {"lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"}
    assert lora <= fields(SFTConfig) and lora <= fields(PPOConfig)
    from rlhfkit.cli.eval import EvalConfig
    from rlhfkit.cli.generate import GenerateConfig

    sampling = {"max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "max_prompt_tokens"}
    for cls in (PPOConfig, EvalConfig, GenerateConfig):
        assert sampling <= fields(cls), cls.__name__


def test_old_python_keywords_still_work_with_a_warning():
    with pytest.warns(FutureWarning, match=r"lr=\.\.\.\) is now learning_rate"):
        config = SFTConfig(data="x.jsonl", lr=1e-3, out="somewhere")
    assert config.learning_rate == 1e-3 and config.output_dir == "somewhere" and config.out == "somewhere"
    with pytest.warns(FutureWarning, match="backbone"):
        assert RewardConfig(backbone="tiny-bert").model == "tiny-bert"
    with pytest.warns(FutureWarning, match="max_grad_norm=0"):
        assert SFTConfig(max_grad_norm=0).max_grad_norm is None


def test_old_yaml_keys_and_flags_still_work_with_a_notice(tmp_path, capsys):
    path = tmp_path / "reward.yaml"
    path.write_text("backbone: tiny-bert\ndata: r.jsonl\nlr: 0.001\nout: runs/x\nmax_grad_norm: 0\n")
    config = build_config(RewardConfig, {}, path)
    assert (config.model, config.learning_rate, config.output_dir, config.max_grad_norm) == ("tiny-bert", 1e-3, "runs/x", None)
    err = capsys.readouterr().err
    assert "'backbone' is now 'model'" in err and "'lr' is now 'learning_rate'" in err and "max_grad_norm: 0" in err
    parser = build_parser()
    args = parser.parse_args(["reward", "--backbone", "tiny-bert", "--lr", "0.002", "--out", "runs/y"])
    assert (args.model, args.learning_rate, args.output_dir) == ("tiny-bert", 0.002, "runs/y")
    assert "--backbone is now --model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sft", "reward", "ppo", "eval", "demo"])
def test_out_is_the_short_flag_of_output_dir(command):
    args = build_parser().parse_args([command, "--out", "somewhere"])
    assert args.output_dir == "somewhere"
    assert "--output-dir" in build_parser()._subparsers._group_actions[0].choices[command].format_help()
