"""The reward both sides of the GRPO benchmark train on: a cheap Python function, so the step time is
sampling and training, not scoring. Completions arrive as text (rlhfkit) or as one assistant message
(TRL, for conversational prompts)."""


def _text(completion) -> str:
    if isinstance(completion, list):  # [{"role": "assistant", "content": ...}]
        return " ".join(m.get("content", "") for m in completion)
    return str(completion)


def short_polite(prompts, completions, **_):
    """Near 1 for replies of about 20 words that say please or thank; lower otherwise."""
    out = []
    for c in completions:
        text = _text(c)
        words = len(text.split())
        polite = any(w in text.lower() for w in ("please", "thank"))
        out.append(1.0 - min(abs(words - 20) / 20, 1.0) + 0.5 * polite)
    return out
