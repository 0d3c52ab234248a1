"""Sentences and content terms: the lexical view route, generate and validate share of a text.

Route selects the sentences of retrieved chunks that best support a question, the extractive
tier answers with them, and validate measures how much of an answer its citations support: all
three need the same notion of a sentence and of the words that carry meaning.

>>> split_sentences("Staff get 25 days. Ask HR first!")
['Staff get 25 days.', 'Ask HR first!']
>>> content_terms("How many vacation days do employees get?")
['many', 'vacation', 'day', 'employee', 'get']
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+]|\d+[.)]|#{1,6})\s+")
_WORD = re.compile(r"[^\W_]+(?:[.'\u2019-][^\W_]+)*", re.UNICODE)

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    also may must shall us per via etc""".split()
)


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`: lines first (headings, list items), then sentence ends."""
    sentences: list[str] = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        if not line:
            continue
        sentences.extend(part.strip() for part in _SENTENCE_END.split(line) if part.strip())
    return sentences


def _stem(word: str) -> str:
    """A light suffix stemmer: enough that 'days' meets 'day' and 'expenses' meets 'expense'."""
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)] + keep
    return word


def content_terms(text: str) -> list[str]:
    """Lower-cased, lightly stemmed words of `text` that carry meaning (no stopwords)."""
    words = (w.lower().replace("\u2019", "'") for w in _WORD.findall(text))
    return [_stem(w) for w in words if w not in STOPWORDS]


@dataclass(frozen=True)
class ScoredSentence:
    """A sentence of a passage and how well it supports a question (0 to 1)."""

    passage: int  # index of the passage it came from
    position: int  # index of the sentence within its passage
    text: str
    score: float


def rank_sentences(question: str, passages: Sequence[str]) -> list[ScoredSentence]:
    """Every sentence of `passages`, best support for `question` first.

    The score is the idf-weighted share of the question's terms a sentence contains, idf
    counted over the candidate sentences, so a rare word of the question weighs more than a
    word every sentence shares."""
    wanted = set(content_terms(question))
    candidates = [
        (p, i, sentence, set(content_terms(sentence)))
        for p, passage in enumerate(passages)
        for i, sentence in enumerate(split_sentences(passage))
    ]
    if not candidates:
        return []
    frequency: Counter[str] = Counter(t for *_, terms in candidates for t in terms & wanted)
    total = len(candidates)
    weight = {t: math.log(1 + total / (1 + frequency[t])) for t in wanted}
    whole = sum(weight.values()) or 1.0
    scored = [
        ScoredSentence(p, i, text, sum(weight[t] for t in terms & wanted) / whole)
        for p, i, text, terms in candidates
    ]
    return sorted(scored, key=lambda s: (-s.score, s.passage, s.position))


def supported_share(claim: str, sources: Iterable[str]) -> float:
    """The share of `claim`'s content terms found in `sources` (1.0 for a claim with none)."""
    terms = content_terms(claim)
    if not terms:
        return 1.0
    available: set[str] = set()
    for source in sources:
        available.update(content_terms(source))
    return sum(t in available for t in terms) / len(terms)


def estimate_tokens(text: str) -> int:
    """Tokens `text` costs a model, estimated (about 4 characters a token in English), for
    budgets decided before any tokenizer runs; generations report the exact figures."""
    return max(1, (len(text) + 3) // 4) if text else 0
