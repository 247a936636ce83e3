"""Every compression of one tuned model and its deployment table, in one run (docs/deploy.md's numbers).

    python scripts/compress_table.py --teacher runs/demo/model --out runs/compress
    python scripts/compress_table.py --teacher smollm2-135m --out runs/compress-smollm2
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.methods.compress import CompressSuite, run_suite  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="tuned model folder, adapter folder or name")
    parser.add_argument("--out", required=True, help="folder for the compressed models and the table")
    parser.add_argument("--distill-rows", type=int, default=128)
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--distill-data", help="distillation rows (default: the shipped training prompts, answered "
                                               "by the teacher)")
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per sampled completion in the table")
    parser.add_argument("--schemes", nargs="+", default=["int8-weight", "int8-dynamic", "int4-weight"],
                        help="quantization schemes to include")
    parser.add_argument("--reuse", action="store_true", help="keep the compressed folders a previous run finished")
    args = parser.parse_args()
    from rlhfkit.cli import _quiet_libraries

    _quiet_libraries()
    run_suite(args.teacher, args.out, CompressSuite(distill_rows=args.distill_rows, distill_epochs=args.distill_epochs,
                                                    distill_data=args.distill_data,
                                                    n_prompts=args.n_prompts, max_new_tokens=args.max_new_tokens,
                                                    schemes=args.schemes, reuse=args.reuse))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
