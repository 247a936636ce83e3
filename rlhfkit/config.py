"""Config dataclasses that double as the command line, loadable from YAML.

Each command has one dataclass; each field carries a one-line help in
`field(metadata={"help": ...})`. `add_arguments` turns the fields into flags and
`build_config` merges defaults < YAML file < flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
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
        parser.add_argument(flag, **kwargs)


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
        from_file = {k.replace("-", "_"): v for k, v in load_yaml(yaml_path).items()}
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise UserError(f"{yaml_path}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
        values.update(from_file)
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values.update({k: v for k, v in given.items() if k in names})
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
