"""`rlhfkit label`: rank completions, by a script (`label script`) or by people (the feedback app)."""

from __future__ import annotations

from rlhfkit.config import add_arguments, build_config
from rlhfkit.labeling import ScriptLabelConfig, run_script


def add_command(subparsers) -> None:
    parser = subparsers.add_parser("label", help="rank completions: scripted labeler, or the human feedback app")
    label_subparsers = parser.add_subparsers(dest="label_command", metavar="LABEL_COMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    script = label_subparsers.add_parser("script", help="rank each prompt's completions by a reward source")
    script.add_argument("--config", help="YAML file of the fields below; flags override it")
    add_arguments(script, ScriptLabelConfig, skip=("input",))
    script.add_argument("--in", "--input", dest="input", default=None,
                        help="completions file: rows {prompt|messages, completions} as `rlhfkit generate` writes")
    script.set_defaults(func=lambda args: run_script(build_config(ScriptLabelConfig, _given(args), args.config)))

    try:
        from rlhfkit.feedback.cli import register
    except ModuleNotFoundError as e:
        if e.name not in ("rlhfkit.feedback", "rlhfkit.feedback.cli"):
            raise
    else:
        register(label_subparsers)


def _given(args) -> dict:
    values = dict(vars(args))
    if values.get("input") is None:
        values.pop("input", None)
    return values
