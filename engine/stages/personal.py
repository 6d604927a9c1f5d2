"""How personal a training target is: its similarity to the student's own attempt.

The paper's released PersD data has a mean difflib similarity of 0.51 between the student's
attempt and its PersD target, against 0.25 for the gold answer, and the PersD target is the
closer one for 81.5% of tasks. We measure the same three ways, all in [0, 1] (1 = identical):

| measure | compares |
|---|---|
| `text`   | difflib ratio of the code normalised by `ast.unparse` (comments, layout, quotes gone) |
| `tokens` | difflib ratio of the Python token sequences (names and literals kept) |
| `ast`    | difflib ratio of the AST node-type sequences (structure only, names ignored) |

Code that does not parse falls back to its raw text for `text` and to an empty sequence for the
others.
"""
from __future__ import annotations

import ast
import difflib
import io
import tokenize
from dataclasses import dataclass
from typing import Iterable

from engine.summary import PersonalStats


def normalise(code: str) -> str:
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return code.strip()


def _tokens(code: str) -> list[str]:
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(code).readline)
                if t.type not in skip]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []


def _nodes(code: str) -> list[str]:
    try:
        return [type(n).__name__ for n in ast.walk(ast.parse(code))]
    except (SyntaxError, ValueError, RecursionError):
        return []


def _ratio(a, b) -> float:
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


@dataclass(frozen=True)
class Similarity:
    text: float
    tokens: float
    ast: float


def similarity(a: str, b: str) -> Similarity:
    na, nb = normalise(a), normalise(b)
    return Similarity(_ratio(na, nb), _ratio(_tokens(na), _tokens(nb)),
                      _ratio(_nodes(a), _nodes(b)))


def unchanged(shown: str, reply: str | None) -> bool:
    """Whether a teacher's code is the code it was shown, once normalised."""
    return reply is not None and normalise(shown) == normalise(reply)


@dataclass(frozen=True)
class Personalisation:
    """One training example's target against the student's attempt at its task; the StanD
    answer and the reference against the same attempt, where the task has them."""

    example_id: str
    task_id: str
    kind: str
    target: Similarity             # this example's target vs the attempt it personalises
    stand: Similarity | None       # the task's verified StanD answer vs the same attempt
    reference: Similarity | None   # the task's reference solution vs the same attempt


def summarise(rows: Iterable[Personalisation]) -> dict[str, PersonalStats]:
    """Per dataset kind: examples, mean similarities, and how often the target is closer to the
    attempt than the StanD answer (by `text`), over the examples whose task has one. One pass
    of running sums: `rows` may be a stream read from disk."""
    sums: dict[str, dict[str, list[float]]] = {}   # kind -> quantity -> [sum, count]

    def add(kind: str, name: str, x: float) -> None:
        acc = sums.setdefault(kind, {}).setdefault(name, [0.0, 0])
        acc[0] += x
        acc[1] += 1

    for r in rows:
        add(r.kind, "examples", 0.0)
        for m in ("text", "tokens", "ast"):
            add(r.kind, m, getattr(r.target, m))
        if r.stand is not None:
            add(r.kind, "stand", r.stand.text)
            add(r.kind, "closer", float(r.target.text > r.stand.text))
        if r.reference:
            add(r.kind, "reference", r.reference.text)

    def mean(kind: str, name: str) -> float | None:
        acc = sums[kind].get(name)
        return round(acc[0] / acc[1], 4) if acc else None

    return {kind: PersonalStats(
        examples=int(sums[kind]["examples"][1]),
        target_vs_attempt={m: mean(kind, m) for m in ("text", "tokens", "ast")},
        stand_vs_attempt=mean(kind, "stand"), reference_vs_attempt=mean(kind, "reference"),
        closer_than_stand=mean(kind, "closer"),
        with_stand=int(sums[kind].get("stand", [0, 0])[1])) for kind in sorted(sums)}
