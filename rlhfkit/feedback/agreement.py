"""Inter-annotator agreement on pairwise preferences.

A ranking of N completions is read as N-choose-2 nominal judgments, one per
pair (i, j) of completion positions with i < j: "<" (i preferred), ">" (j
preferred) or "=" (tie). Agreement is measured on these pair judgments:

- Cohen's kappa for exactly two annotators (units both of them judged);
- Krippendorff's alpha, nominal metric, for any number of annotators, with
  missing judgments allowed (units with fewer than two judgments are dropped).

Both are None where undefined (no pairable unit, or no variation at all, so
that chance agreement is 1 and the ratio is 0/0).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Hashable, Iterable, Sequence


def pair_judgments(ranks: Sequence[int]) -> dict[tuple[int, int], str]:
    """{(i, j): "<" | ">" | "="} for i < j; rank 1 is best, so a smaller rank wins."""
    out = {}
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            out[(i, j)] = "<" if ranks[i] < ranks[j] else ">" if ranks[i] > ranks[j] else "="
    return out


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels on the same units: (p_o - p_e) / (1 - p_e)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}; both raters must label the same units")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def krippendorff_alpha_nominal(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha (nominal) from the values each unit received (missing ones left out).

    Built on the coincidence matrix: a unit with m >= 2 values adds 1/(m-1) for
    every ordered pair of values from different coders. alpha = 1 - D_o / D_e.
    """
    o: dict[tuple, float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue  # a lone value cannot be compared with anything
        for p, c in enumerate(values):
            for q, k in enumerate(values):
                if p != q:
                    o[(c, k)] += 1.0 / (m - 1)
    n_c: dict[Hashable, float] = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n <= 1:
        return None
    d_o = sum(v for (c, k), v in o.items() if c != k) / n
    d_e = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    if d_e == 0:
        return None
    return 1.0 - d_o / d_e


def ranking_agreement(labels: Iterable[tuple[Hashable, Hashable, Sequence[int]]]) -> dict:
    """Agreement of (item, annotator, ranks) labels on their pair judgments.

    Returns {"annotators", "pair_units", "cohen_kappa", "krippendorff_alpha_nominal"};
    kappa only when exactly two annotators labelled, over pairs both judged.
    """
    units: dict[tuple, dict] = defaultdict(dict)  # (item, i, j) -> {annotator: judgment}
    annotators = set()
    for item, annotator, ranks in labels:
        annotators.add(annotator)
        for (i, j), v in pair_judgments(ranks).items():
            units[(item, i, j)][annotator] = v
    pairable = [u for u in units.values() if len(u) >= 2]
    kappa = None
    if len(annotators) == 2:
        x, y = sorted(annotators, key=str)
        both = [u for u in pairable if x in u and y in u]
        kappa = cohen_kappa([u[x] for u in both], [u[y] for u in both])
    alpha = krippendorff_alpha_nominal([list(u.values()) for u in pairable])
    return {
        "annotators": len(annotators),
        "pair_units": len(pairable),
        "cohen_kappa": kappa,
        "krippendorff_alpha_nominal": alpha,
    }
