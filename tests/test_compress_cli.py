"""The compression commands: flags as documented, one clear error (exit 2, the fix) per bad input."""

import shutil

import pytest


def _run(*argv):
    from rlhfkit.cli import main

    return main(list(argv))


def test_quantize_and_prune_commands_write_plain_folders(tiny_llama_dir, tmp_path, write_jsonl):
    from transformers import AutoModelForCausalLM

    calib = write_jsonl([{"prompt": "Say hello."}, {"prompt": "Write a kind note."}], "c.jsonl")
    assert _run("quantize", "--model", str(tiny_llama_dir), "--scheme", "int8-dynamic", "--out", str(tmp_path / "q"),
                "--no-measure") == 0
    assert _run("prune", "--model", str(tiny_llama_dir), "--method", "wanda", "--pattern", "2:4", "--calibration",
                str(calib), "--out", str(tmp_path / "p"), "--no-measure") == 0
    assert _run("prune", "--model", str(tiny_llama_dir), "--method", "depth", "--drop-layers", "1", "--calibration",
                str(calib), "--out", str(tmp_path / "d"), "--no-measure") == 0
    for name in ("q", "p", "d"):
        AutoModelForCausalLM.from_pretrained(str(tmp_path / name))


def test_distill_command(tiny_llama_dir, tmp_path, write_jsonl):
    data = write_jsonl([{"prompt": "Say hello.", "completion": "Hello there, friend."},
                        {"prompt": "Write a kind note.", "completion": "Thank you so much for your help today!"}])
    assert _run("distill", "--teacher", str(tiny_llama_dir), "--student-layers", "2", "--data", str(data),
                "--out", str(tmp_path / "s"), "--no-measure", "--batch-size", "2", "--loss", "jsd",
                "--beta", "0.3") == 0
    assert (tmp_path / "s" / "README.md").exists()  # the model card


@pytest.mark.parametrize("argv, message", [
    (["quantize", "--scheme", "int8-weight"], "no weights"),
    (["quantize", "--scheme", "int8-weight", "--model", "tiny-gpt2"], "Conv1D"),
    (["prune", "--method", "magnitude", "--sparsity", "1.0"], r"must be in \(0, 1\)"),
    (["prune", "--method", "magnitude", "--sparsity", "0"], r"must be in \(0, 1\)"),
    (["prune", "--method", "magnitude", "--pattern", "4:2"], "0 < N < M"),
    (["distill", "--student-layers", "2", "--data", "x.jsonl", "--beta", "2"], "must be in"),
])
def test_bad_inputs_are_one_clear_error(tiny_llama_dir, tmp_path, capsys, argv, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", empty / "config.json")
    model = argv[argv.index("--model") + 1] if "--model" in argv else str(empty)
    argv = [a for i, a in enumerate(argv) if a != "--model" and (i == 0 or argv[i - 1] != "--model")]
    flag = "--teacher" if argv[0] == "distill" else "--model"
    code = _run(*argv, flag, model, "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err
