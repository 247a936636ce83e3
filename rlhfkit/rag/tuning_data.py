"""Synthetic RAG answering rows for a quick supervised LoRA (docs/rag.md, "Tuned against base").

    python -m rlhfkit.rag.tuning_data --out rag_sft.jsonl --rows 128
    rlhfkit sft --model smollm2-135m --data rag_sft.jsonl --lora --lr 3e-4 --out runs/rag-lora

Each row is `{"prompt": [system, user], "completion": str}` in exactly the format
`rlhfkit rag ask` builds (`build_messages`): three or four numbered sources, one
of which states a made-up fact, and a question whose answer is one sentence
repeating that fact. The facts (names, numbers, places) are invented from
fixed word lists, so nothing overlaps the shipped handbook the tuned model is
then evaluated on: the adapter can learn the format (answer briefly, from the
right source) but not the handbook's answers.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

_PLACES = ["Skarvik", "Lindholm", "Tornes", "Vesterby", "Oddemark", "Brattli", "Hovland", "Strandvik", "Myrvang",
           "Eikeli", "Fjellstad", "Nordmo", "Solbakken", "Kvernes", "Ramberg"]
_THINGS = ["ferry pass", "library card", "parking disc", "pool ticket", "tool rental", "boat slip", "locker",
           "climbing wall pass", "museum ticket", "bike share pass", "sauna session", "kayak rental"]
_PEOPLE = ["Astrid Moen", "Henrik Dahl", "Sigrid Lunde", "Tor Eide", "Nora Vik", "Lars Aas", "Ingeborg Strand",
           "Petter Holm", "Kari Lie", "Ola Brekke"]
_ROLES = ["harbour master", "head librarian", "site manager", "club treasurer", "school principal", "fleet manager"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _fact(rng: random.Random) -> tuple[str, str, str, str]:
    """(title, source text, question, answer) of one invented fact."""
    place = rng.choice(_PLACES)
    kind = rng.randrange(5)
    if kind == 0:
        thing, price = rng.choice(_THINGS), rng.choice(range(20, 900, 5))
        text = (f"In {place} the {thing} costs {price} kroner. It is sold at the service desk and online, "
                f"and children under twelve pay half.")
        q = rng.choice([f"How much is the {thing} in {place}?", f"What does a {thing} cost in {place}?",
                        f"What is the price of the {place} {thing}?"])
        return f"{place} prices", text, q, f"The {thing} in {place} costs {price} kroner."
    if kind == 1:
        person, role = rng.choice(_PEOPLE), rng.choice(_ROLES)
        text = f"The {role} of {place} is {person}, who took over the post in {rng.randrange(1995, 2025)}."
        q = rng.choice([f"Who is the {role} of {place}?", f"Which person is {place}'s {role}?"])
        return f"{place} contacts", text, q, f"The {role} of {place} is {person}."
    if kind == 2:
        thing, hour = rng.choice(_THINGS), rng.randrange(6, 11)
        close = hour + rng.randrange(6, 11)
        text = f"The {thing} office in {place} opens at {hour}:00 and closes at {close}:00 on weekdays."
        q = rng.choice([f"When does the {thing} office in {place} open?", f"What are the opening hours of the "
                        f"{thing} office in {place}?"])
        return f"{place} opening hours", text, q, f"It opens at {hour}:00 and closes at {close}:00 on weekdays."
    if kind == 3:
        day, thing = rng.choice(_DAYS), rng.choice(_THINGS)
        text = f"In {place} the {thing} counter is closed every {day}, and on public holidays."
        q = rng.choice([f"On which day is the {thing} counter in {place} closed?",
                        f"Which weekday can I not buy a {thing} in {place}?"])
        return f"{place} closures", text, q, f"It is closed every {day}."
    days = rng.randrange(2, 60)
    thing = rng.choice(_THINGS)
    text = f"A {thing} from {place} must be renewed every {days} days; renewals are free of charge."
    q = rng.choice([f"How often must a {place} {thing} be renewed?", f"After how many days does the {thing} "
                    f"from {place} need renewing?"])
    return f"{place} renewals", text, q, f"It must be renewed every {days} days."


def make_rows(n: int, seed: int = 0, unknown_share: float = 0.1) -> list[dict]:
    """`n` SFT rows; about `unknown_share` of them have no source with the answer and answer
    that the sources do not say."""
    from rlhfkit.rag.answering import build_messages
    from rlhfkit.rag.stores import Hit, StoredChunk

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        facts = [_fact(rng) for _ in range(rng.randrange(3, 5))]
        title, text, question, answer = facts[0]
        if rng.random() < unknown_share:
            facts = facts[1:]
            answer = "The sources do not say, so I do not know."
        rng.shuffle(facts)
        hits = [Hit(StoredChunk(f"/notes/{t.split()[0].lower()}.md", "", 0, t, x, 1, 1), 0.5) for t, x, _, _ in facts]
        rows.append({"prompt": build_messages(question, hits), "completion": answer})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="rag_sft.jsonl")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = make_rows(args.rows, args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
