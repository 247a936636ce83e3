"""Sampling bench: tokens/s of `rlhfkit.models.generation.sample` at the demo's batch, against the matmul peak.

    .venv/bin/python bench/sampling.py                  # 16 prompts x 4 samples x 32 tokens, 3 repeats
    .venv/bin/python bench/sampling.py --prompts 16 --samples 1 --new-tokens 48

Times, in one process and alternating so both see the same machine, the two
ways `sample()` can sample: transformers' `generate(num_return_sequences=n)`
(`use_generate=True`: every sample's copy of its prompt is read, top-p sorts
the whole vocabulary and the draw runs over all of it) and rlhfkit's decode
loop, the default (`generation._decode`: each distinct prompt read once, its
KV cache copied to its samples; the nucleus found and drawn from among the
1024 likeliest tokens). Every response runs the full `--new-tokens` (EOS
suppressed) so both paths decode the same number of tokens.
Reports the median seconds, sampled tokens/s, and the share of the fp32 (or
bf16) matmul peak each path's own work reaches (FLOP model of bench/common.py:
2 per matmul weight per token read, the LM head only for sampled tokens).
Writes bench/results/sampling-<stamp>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts per batch")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (rows = prompts x samples)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9, help="1 = off (the online methods' rollouts)")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per path (after one warm-up each)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=BENCH / "results")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from rlhfkit.data import load_prompts
    from rlhfkit.models.generation import GenerationSettings, encode_prompts, sample
    from rlhfkit.models.loading import load_policy

    torch.set_num_threads(args.threads)
    policy = load_policy(args.model, verbose=False)
    model, tok = policy.model.eval(), policy.tokenizer
    prompts = load_prompts(ROOT / "rlhfkit" / "assets" / "prompts_train.jsonl")[: args.prompts]
    queries = encode_prompts(tok, prompts)
    # suppress EOS so every row decodes exactly --new-tokens: both paths do the same work
    settings = GenerationSettings(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p,
                                  min_new_tokens=args.new_tokens)
    peak = common.matmul_peak("float32")
    dims = common.count_dims(model)
    rows, width = args.prompts * args.samples, max(len(q) for q in queries)  # left-padded to the longest
    decode = common.forward_flops(dims, rows, args.new_tokens - 1, args.new_tokens)  # one head row per sampled token
    work = {"generate": decode + common.forward_flops(dims, rows, width, 0),
            "rlhfkit": decode + common.forward_flops(dims, args.prompts, width, 0)}
    seconds = {path: [] for path in work}
    for i in range(args.repeats + 1):  # the first round warms up both paths
        for path in work:
            torch.manual_seed(i)
            start = time.perf_counter()
            out = sample(model, tok, queries, settings, num_return_sequences=args.samples,
                         use_generate=path == "generate")
            elapsed = time.perf_counter() - start
            assert all(len(r) == args.new_tokens for r in out), "a response stopped early"
            if i:
                seconds[path].append(elapsed)
            print(f"bench sampling: round {i} {path}: {elapsed:.2f} s", flush=True)
    table = []
    for path, xs in seconds.items():
        med = statistics.median(xs)
        table.append({"path": path, "median s": med, "tok/s": rows * args.new_tokens / med,
                      "% peak": 100 * work[path] / med / 1e9 / peak["gflops"]})
    table[1]["x generate"] = statistics.median(seconds["generate"]) / table[1]["median s"]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    head = ["path", "median s", "tok/s", "x generate", "% peak"]
    lines = common.markdown_table(head, table)
    md = (f"# Sampling bench {stamp}\n\n{platform.processor() or platform.machine()}, {args.threads} threads, fp32 "
          f"matmul peak {peak['gflops']} GFLOP/s; {args.model}, {args.prompts} prompts x {args.samples} samples "
          f"= {rows} rows, prompts left-padded to {width} tokens, {args.new_tokens} new tokens each, T {args.temperature} top-p {args.top_p}, "
          f"median of {args.repeats}\n\n" + lines + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sampling-{stamp}.md").write_text(md)
    (args.out / f"sampling-{stamp}.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "peak": peak, "seconds": seconds, "rows": table}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
