"""Question traffic as real users send it: mostly fresh, some exact repeats, some paraphrases.

Seeded and deterministic: the same corpus, count and seed give the same questions in the same
order on every machine. A repeat is an earlier question word for word; a paraphrase asks an
earlier question's fact of the same site in other words (what the semantic cache is for).

>>> from bench.corpus import make_corpus
>>> traffic = make_traffic(make_corpus(20, seed=7), 50, seed=7)
>>> len(traffic), traffic[0].kind
(50, 'fresh')
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from bench.corpus import ASKS, SiteDocument

Kind = Literal["fresh", "repeat", "paraphrase"]
#: Shares of fresh questions and exact repeats; the rest are paraphrases.
FRESH_SHARE = 0.60
REPEAT_SHARE = 0.25
PARAPHRASES = {
    "leave": "What is the paid leave allowance, in days, for full-time staff at the {site} site?",
    "remote": "Up to how many days per week can {site} employees work from home?",
    "desks": "What is the number of desks in the {site} office?",
    "parking": "What is the number of parking spaces at the {site} office?",
    "opening": "At what time does the {site} building open on working days?",
}


@dataclass(frozen=True)
class TrafficQuestion:
    question: str
    kind: Kind
    expected_doc: str
    key_fact: str


def make_traffic(corpus: list[SiteDocument], count: int, seed: int = 8) -> list[TrafficQuestion]:
    """`count` questions: FRESH_SHARE fresh, REPEAT_SHARE exact repeats, the rest paraphrases
    (the first one is always fresh: there is nothing to repeat yet)."""
    rng = random.Random(seed + 2)
    pairs = [(document, fact) for document in corpus for fact in ASKS]
    rng.shuffle(pairs)
    asked: list[tuple[SiteDocument, str]] = []
    out: list[TrafficQuestion] = []
    for _ in range(count):
        draw = rng.random()
        if not asked or draw < FRESH_SHARE:
            if not pairs:
                raise ValueError(f"not enough fresh questions for {count} with {len(corpus)} docs")
            document, fact = pairs.pop()
            asked.append((document, fact))
            kind: Kind = "fresh"
            text = ASKS[fact]
        else:
            document, fact = rng.choice(asked)
            kind = "repeat" if draw < FRESH_SHARE + REPEAT_SHARE else "paraphrase"
            text = ASKS[fact] if kind == "repeat" else PARAPHRASES[fact]
        out.append(
            TrafficQuestion(
                text.format(site=document.site), kind, document.doc_id, document.facts[fact]
            )
        )
    return out


def mix(traffic: list[TrafficQuestion]) -> dict[str, int]:
    """How many of each kind."""
    return dict(Counter(q.kind for q in traffic))
