"""Config dataclasses that double as the command line, loadable from YAML, and their one vocabulary.

Each command has one dataclass; each field carries a one-line help in
`field(metadata={"help": ...})`. `add_arguments` turns the fields into flags and
`build_config` merges defaults < YAML file < flags given on the command line.

One vocabulary across commands: `model`, `output_dir` (flag alias `--out`),
`learning_rate`, `max_grad_norm` (None = off), `weight_decay` (AdamW everywhere), and
shared blocks of fields (`LoraFields`, `SamplingFields`, `OptimFields`) that every
command with LoRA, sampling or training reuses. Old names (`lr`, `out`, `backbone`,
`max_grad_norm: 0`) are still accepted, in YAML, flags and Python, with a notice.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhfkit.errors import UserError


def option(default=dataclasses.MISSING, help: str = "", **kwargs):
    """A config field with its one-line help."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per dataclass field (`--field-name`); unset flags stay absent from the namespace."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        help_text = f.metadata.get("help", "")
        kwargs["help"] = f"{help_text} (default: {default})" if default is not None else help_text
        flag = "--" + f.name.replace("_", "-")
        flags = [flag] + (["--out"] if f.name == "output_dir" else [])
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(kwargs["choices"][0])
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp) or (str,)
            kwargs["nargs"] = "+"
            kwargs["type"] = item
        elif tp in (int, float, str):
            kwargs["type"] = tp
        else:
            kwargs["type"] = str
        parser.add_argument(*flags, **kwargs)
        for old, new in getattr(cls, "__renamed__", {}).items():
            if new == f.name and "--" + old.replace("_", "-") not in flags:
                parser.add_argument("--" + old.replace("_", "-"), **{**kwargs, "help": argparse.SUPPRESS,
                                                                     "action": _renamed_action(old, new, kwargs)})


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a config file is a mapping of field: value")
    return values


def build_config(cls, args: argparse.Namespace | dict | None = None, yaml_path: str | Path | None = None):
    """defaults < YAML file < explicit flags; unknown YAML keys are an error naming the valid ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        from_file = _new_names(cls, {k.replace("-", "_"): v for k, v in load_yaml(yaml_path).items()}, yaml_path)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise UserError(f"{yaml_path}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
        values.update(from_file)
    given = vars(args) if isinstance(args, argparse.Namespace) else _new_names(cls, dict(args or {}), None)
    values.update({k: v for k, v in given.items() if k in names})
    if "max_grad_norm" in names and values.get("max_grad_norm") == 0:
        _notice("max_grad_norm: 0 for 'off' is deprecated; use null (None)")
        values["max_grad_norm"] = None
    try:
        config = cls(**values)
    except TypeError as e:
        raise UserError(f"{cls.__name__}: {e}") from None
    _check_types(config)
    return config


def _check_types(config) -> None:
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        tp, optional = _unwrap_optional(hints[f.name])
        if value is None:
            if optional:
                continue
            flag = "--" + f.name.replace("_", "-")
            raise UserError(f"{flag} is required: {f.metadata.get('help', f.name)}")
        if typing.get_origin(tp) is Literal:
            if value not in typing.get_args(tp):
                raise UserError(f"{f.name}: {value!r} is not one of {list(typing.get_args(tp))}")
        elif tp is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, f.name, float(value))
        elif tp in (int, float, str, bool) and not isinstance(value, tp):
            raise UserError(f"{f.name}: expected {tp.__name__}, got {value!r}")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def save_yaml(config, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def add_config_command(subparsers, name: str, help: str, cls, run, skip: tuple[str, ...] = ()):
    """Register `rlhfkit NAME`: `--config FILE.yaml` plus one flag per field of `cls`.

    `run(config)` does the work; a non-integer result counts as success (exit 0).
    Returns the parser, for commands that add flags of their own.
    """
    parser = subparsers.add_parser(name, help=help)
    parser.add_argument("--config", help="YAML file of the fields below; flags override it")
    add_arguments(parser, cls, skip=skip)

    def _func(args) -> int:
        result = run(build_config(cls, args, args.config))
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    parser.set_defaults(func=_func)
    return parser


# ---------------------------------------------------------------- renamed fields


def _notice(message: str) -> None:
    print(f"rlhfkit: notice: {message}", file=sys.stderr)


def _new_names(cls, values: dict, where) -> dict:
    """Old field names (the class's `__renamed__`) mapped to the new ones, with a notice each."""
    renamed = getattr(cls, "__renamed__", {})
    out = {}
    for key, value in values.items():
        if key in renamed and renamed[key] not in values:
            if where is not None:
                _notice(f"{where}: '{key}' is now '{renamed[key]}'; the old name will stop working in a later release")
            key = renamed[key]
        out[key] = value
    return out


def _renamed_action(old: str, new: str, kwargs: dict):
    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            _notice(f"--{old.replace('_', '-')} is now --{new.replace('_', '-')}")
            setattr(namespace, new, value)

    return Renamed


def renamed(**old_to_new: str):
    """Class decorator for a config dataclass whose fields were renamed: the old keywords still
    work (`SFTConfig(lr=1e-4)`, with a FutureWarning), read and write through properties, and are
    accepted by `build_config` (YAML keys, hidden flags) with a notice."""
    def decorate(cls):
        cls.__renamed__ = {**getattr(cls, "__renamed__", {}), **old_to_new}
        init = cls.__init__

        def __init__(self, *args, **kwargs):
            for old, new in cls.__renamed__.items():
                if old in kwargs:
                    warnings.warn(f"{cls.__name__}({old}=...) is now {new}=...", FutureWarning, stacklevel=2)
                    kwargs.setdefault(new, kwargs.pop(old))
            init(self, *args, **kwargs)

        __init__.__wrapped__ = init
        cls.__init__ = __init__
        for old, new in old_to_new.items():
            setattr(cls, old, property(lambda self, n=new: getattr(self, n),
                                       lambda self, v, n=new: setattr(self, n, v)))
        return cls
    return decorate


# ---------------------------------------------------------------- shared blocks
#
# Dataclass fields come from the bases in reverse order of inheritance: `class C(B, A)` lists
# A's fields, then B's, then C's own.


@dataclasses.dataclass
class LoraFields:
    lora: bool = option(False, "train a LoRA adapter instead of all weights")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA scaling alpha")
    lora_dropout: float = option(0.0, "LoRA dropout (0 keeps log-probs of rollout and update equal in online methods)")
    lora_target_modules: list[str] = option(["all-linear"], "modules that get adapters (peft names; all-linear = "
                                                            "every linear layer but the output head)")


@dataclasses.dataclass
class SamplingFields:
    max_new_tokens: int = option(48, "maximum tokens per completion")
    min_new_tokens: int = option(0, "minimum tokens per completion")
    temperature: float = option(1.0, "sampling temperature (log-probs use the same)")
    top_k: int = option(0, "top-k sampling (0 = off, as online methods' log-probs assume)")
    top_p: float = option(1.0, "nucleus sampling (1 = off)")
    max_prompt_tokens: int | None = option(None, "keep the last N tokens of longer prompts (None = all)")

    def check_sampling(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature <= 0:
            raise UserError("temperature must be positive")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UserError("top_p must be in (0, 1] and top_k >= 0 (0 = off)")


@dataclasses.dataclass
class ReportFields:
    """Where a trainer reports: experiment trackers, and the Hub (every trainer has these through OptimFields)."""

    report_to: str = option("none", "experiment trackers: none, tensorboard, trackio, wandb, mlflow (comma-separated "
                                    "for several; rlhfkit.training.tracking)")
    push_to_hub: str | None = option(None, "upload the saved model folder (with its model card) to this Hub repo "
                                           "id, e.g. user/name (needs network access and a token)")


@dataclasses.dataclass
class OptimFields(ReportFields):
    learning_rate: float = option(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm (None = off)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimisation step (memory only; same maths)")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "accelerate mixed precision (bf16 works on CPU)")
    seed: int = option(0, "random seed")

    def __post_init__(self):
        if self.max_grad_norm == 0:
            warnings.warn("max_grad_norm=0 for 'off' is deprecated; use None", FutureWarning, stacklevel=3)
            self.max_grad_norm = None
