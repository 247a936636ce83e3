"""The `rlhfkit label` subcommands: serve, import, add-annotator, export, stats."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import timedelta

from rlhfkit.errors import UserError

DEFAULT_DB = "sqlite:///feedback.db"


def register(subparsers) -> None:
    """Add the label subcommands to an argparse subparsers object; each sets func(args) -> int."""
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=DEFAULT_DB, help=f"database URL (default {DEFAULT_DB}; "
                    "PostgreSQL: postgresql://user:password@host/dbname)")

    p = subparsers.add_parser("serve", parents=[db], help="run the labelling web app")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--per-item", type=int, default=1, help="annotators wanted per item (default 1)")
    p.add_argument("--lease-minutes", type=float, default=60.0,
                   help="an assignment left untouched this long may go to someone else (default 60)")
    p.add_argument("--max-body-kb", type=int, default=64, help="largest request body in KiB (default 64)")
    p.add_argument("--allow-origin", action="append", default=[],
                   help="extra allowed Origin, e.g. https://label.example.org behind a proxy (repeatable)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("import", parents=[db], help="add prompts and completions from `rlhfkit generate`")
    p.add_argument("path", help="JSONL (or CSV/Parquet) rows with prompt/messages and completions")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser("add-annotator", parents=[db], help="create an annotator and print their private link")
    p.add_argument("name")
    role = p.add_mutually_exclusive_group()
    role.add_argument("--admin", dest="role", action="store_const", const="admin",
                      help="an admin account: sees the statistics page, labels nothing")
    role.add_argument("--annotator", dest="role", action="store_const", const="annotator",
                      help="with --new-token: make an existing admin account an annotator again")
    p.add_argument("--new-token", action="store_true", help="replace the token (and link) of an existing account")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL the server is reached at")
    p.set_defaults(func=cmd_add_annotator)

    p = subparsers.add_parser("export", parents=[db], help="write labels as rankings or preference pairs")
    p.add_argument("--format", choices=["rankings", "pairs"], default="rankings")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--raw", help="raw labels file (default: OUT stem + .raw.jsonl)")
    p.add_argument("--summary", help="summary JSON file (default: OUT stem + .summary.json)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("stats", parents=[db], help="print progress and agreement")
    p.add_argument("--per-item", type=int, default=1, help="annotators wanted per item (default 1)")
    p.set_defaults(func=cmd_stats)


def _store(args):
    from rlhfkit.feedback.store import Store

    return Store(args.db)


def cmd_import(args) -> int:
    from rlhfkit.feedback.export import read_generated

    notes: list[str] = []
    rows = read_generated(args.path, notes)  # the whole file is checked before anything is written
    store = _store(args)
    added, present = store.import_items(rows)
    print(f"imported {added} items from {args.path} ({present} already present, skipped)")
    for note in notes:
        print(f"note: {note}")
    return 0


def cmd_add_annotator(args) -> int:
    if not re.fullmatch(r"[\w.@+-]{1,100}", args.name):
        raise UserError(f"name {args.name!r}: use 1-100 letters, digits or . _ @ + -")
    store = _store(args)
    token = store.add_annotator(args.name, args.role, args.new_token)  # role None: an existing account keeps its own
    print(f"{store.annotator(args.name).role} {args.name}: private link (share only with them; it is shown once):")
    print(f"{args.url.rstrip('/')}/login#{token}")
    return 0


def cmd_export(args) -> int:
    from rlhfkit.feedback.export import export

    s = export(_store(args), args.format, args.out, args.raw, args.summary)
    agreement = s["agreement"]
    print(f"wrote {s['rows']} {args.format} rows to {s['out']}; raw labels to {s['raw']}")
    print(f"labels: {json.dumps(s['labels'])}; agreement: {json.dumps(agreement)}")
    if s["rows"] == 0:
        print("warning: no rows to train on yet (no rankings, or only ties / all-bad)", file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    from rlhfkit.feedback.export import summary

    store = _store(args)
    print(json.dumps({**store.counts(args.per_item), **summary(store.all_labels())}, indent=2))
    return 0


class _RedactTokens(logging.Filter):
    """Defence in depth: tokens travel in headers, but never let one reach a log line.

    A token is 43 characters of [A-Za-z0-9_-]; a mangled private link can carry it after
    `#`, `%23`, `?`, `&`, `/`, `token=`, partly percent-encoded, or doubly encoded. So any run of
    16 or more token characters (a percent-escape of one counts as one) is redacted, whatever
    precedes it. Paths of this app have no such run; the line is never decoded (so `%0A` stays text).
    """

    _unit = r"(?:[A-Za-z0-9_-]|%(?:3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|2[Dd]|5[Ff]))"
    pattern = re.compile(rf"{_unit}{{16,}}")

    def _redact(self, value):
        return self.pattern.sub("[redacted]", value) if isinstance(value, str) else value

    def filter(self, record):
        record.msg = self._redact(str(record.msg))
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._redact(v) for k, v in record.args.items()}
        return True


def cmd_serve(args) -> int:
    import uvicorn

    from rlhfkit.feedback.app import Settings, create_app

    if args.per_item < 1:
        raise UserError("--per-item must be at least 1")
    store = _store(args)
    counts = store.counts(args.per_item)
    if counts["items"] == 0:
        print("warning: the database holds no items yet; run `rlhfkit label import FILE`", file=sys.stderr)
    settings = Settings(per_item=args.per_item, lease=timedelta(minutes=args.lease_minutes),
                        max_body=args.max_body_kb * 1024, allowed_origins=args.allow_origin)
    logging.getLogger("uvicorn.access").addFilter(_RedactTokens())
    print(f"serving {counts['items']} items on http://{args.host}:{args.port} "
          f"({args.per_item} annotator(s) per item); annotators open their private links", flush=True)
    uvicorn.run(create_app(store, settings), host=args.host, port=args.port, log_level="info",
                h11_max_incomplete_event_size=64 * 1024)
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point (`python -m rlhfkit.feedback`), as `rlhfkit label` would run it."""
    parser = argparse.ArgumentParser(prog="rlhfkit label")
    sub = parser.add_subparsers(dest="label_command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
