"""The extractive tier: no model, the context sentences that best support the question, cited.

It needs no model server, so it ends every fallback chain.

>>> extract_answer("How many vacation days?", [("c-1", "Staff get 25 vacation days.")])
ExtractiveAnswer(answer='Staff get 25 vacation days.', citations=['c-1'], confidence=1.0)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.runtime.sentences import rank_sentences

#: A second sentence joins the best one when it scores at least this share of the best score.
SECOND_SENTENCE_SHARE = 0.75
MAX_SENTENCES = 2
_EMPHASIS = re.compile(r"(\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)|`)")


def plain(sentence: str) -> str:
    """A sentence without Markdown emphasis and code marks, as a reader wants it."""
    return _EMPHASIS.sub("", sentence)


@dataclass(frozen=True)
class ExtractiveAnswer:
    answer: str
    citations: list[str]
    confidence: float


def extract_answer(question: str, sources: Sequence[tuple[str, str]]) -> ExtractiveAnswer:
    """The best-supporting sentence (and a close second) of `sources` ((id, text) pairs)."""
    ranked = rank_sentences(question, [text for _, text in sources])
    if not ranked:
        return ExtractiveAnswer("The documents retrieved hold no text to answer from.", [], 0.0)
    best = ranked[0]
    picked = [best]
    for sentence in ranked[1:]:
        if len(picked) == MAX_SENTENCES or sentence.score < best.score * SECOND_SENTENCE_SHARE:
            break
        if sentence.score > 0 and sentence.text != best.text:
            picked.append(sentence)
    picked.sort(key=lambda s: (s.passage, s.position))
    citations = list(dict.fromkeys(sources[s.passage][0] for s in picked))
    return ExtractiveAnswer(
        " ".join(plain(s.text) for s in picked), citations, round(min(1.0, best.score), 4)
    )
