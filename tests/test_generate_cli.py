import json
import subprocess
import sys

import pytest

from rlhfkit.cli import main
from rlhfkit.data import load_rankings


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-t5"])
def test_generate_writes_rankings_format_minus_ranks(tmp_path, write_jsonl, model):
    prompts = write_jsonl([{"prompt": "hello there"}, {"messages": [{"role": "user", "content": "be nice"}]}])
    out = tmp_path / "c.jsonl"
    assert main(["generate", "--model", model, "--prompts", str(prompts), "--n", "3",
                 "--max-new-tokens", "5", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["completions"]) for r in rows] == [3, 3]
    assert rows[0]["prompt"] == "hello there" and rows[1]["messages"][0]["content"] == "be nice"
    # Ready for labelling: adding ranks makes it a valid rankings file (if no completion is empty).
    ranked = tmp_path / "r.jsonl"
    ranked.write_text("".join(json.dumps({**r, "completions": [c or "x" for c in r["completions"]], "ranks": [1, 2, 3]}) + "\n" for r in rows))
    assert len(load_rankings(ranked)) == 2


def test_generate_is_reproducible_with_a_seed(tmp_path, write_jsonl):
    prompts = write_jsonl([{"prompt": "hello there"}])
    outs = []
    for i in range(2):
        out = tmp_path / f"c{i}.jsonl"
        main(["generate", "--model", "tiny-gpt2", "--prompts", str(prompts), "--n", "2", "--max-new-tokens", "6",
              "--out", str(out), "--seed", "7"])
        outs.append(out.read_text())
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--model", "tiny-gpt2"], "--prompts is required: prompts file"),
        (["generate", "--prompts", "missing.jsonl"], "missing.jsonl: no such file"),
        (["generate", "--model", "./nowhere", "--prompts", "PROMPTS"], "model folder './nowhere' does not exist"),
        (["generate", "--model", "tiny-gpt2", "--prompts", "PROMPTS", "--n", "0"], "--n must be at least 1"),
        (["generate", "--model", "tiny-gpt2", "--prompts", "BAD"], "row 1: column 'prompt': empty text"),
        (["generate", "--config", "nope.yaml"], "nope.yaml: config file not found"),
    ],
)
def test_bad_input_is_one_line_with_the_fix(tmp_path, write_jsonl, capsys, args, message):
    good = write_jsonl([{"prompt": "hi"}], "good.jsonl")
    bad = write_jsonl([{"prompt": ""}], "bad.jsonl")
    args = [str(good) if a == "PROMPTS" else str(bad) if a == "BAD" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_yaml_config_and_flag_override(tmp_path, write_jsonl):
    prompts = write_jsonl([{"prompt": "hi"}, {"prompt": "yo"}])
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(f"model: tiny-gpt2\nprompts: {prompts}\nn: 5\nmax_new_tokens: 3\nout: {tmp_path / 'a.jsonl'}\n")
    assert main(["generate", "--config", str(cfg), "--n", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [len(r["completions"]) for r in rows] == [2, 2]
    cfg.write_text("modell: tiny-gpt2\n")
    assert main(["generate", "--config", str(cfg)]) == 2


def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlhfkit.cli", "generate", "--prompts", str(tmp_path / "x.jsonl")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "no such file" in result.stderr


@pytest.mark.slow
def test_smollm2_writes_readable_replies_offline(tmp_path, write_jsonl):
    prompts = write_jsonl([{"prompt": "My neighbour keeps parking in my spot. What should I say to him?"},
                           {"prompt": "Give me one tip for staying calm in traffic."}])
    out = tmp_path / "c.jsonl"
    assert main(["generate", "--model", "smollm2-135m", "--prompts", str(prompts), "--n", "2",
                 "--max-new-tokens", "32", "--out", str(out)]) == 0
    texts = [c for line in out.read_text().splitlines() for c in json.loads(line)["completions"]]
    assert len(texts) == 4
    # Readable: mostly ordinary words, not byte soup (a random model scores near 0 here).
    words = [w.strip(".,!?;:'\"()*") for t in texts for w in t.split()]
    assert len(words) >= 40
    assert sum(w.isalpha() for w in words) / len(words) > 0.7
