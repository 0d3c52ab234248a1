"""Context selection: keep the sentences of the retrieved chunks that best support a question,
until the tier's context budget is full, so the model reads little and cites precisely.
Paragraphs that address the model (prompt injections) are never selected."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from contracts.v1 import ContextChunkV1
from services.route.index import Hit
from services.runtime.injection import without_injections
from services.runtime.sentences import estimate_tokens, rank_sentences

#: Chunk texts whose injection-free form is kept: the same chunks are retrieved again and
#: again, and scanning one costs ~0.9 ms (5.5% of route's CPU under load: bench/README.md).
CLEANED_TEXTS = 2048


@lru_cache(maxsize=CLEANED_TEXTS)
def _without_injections(text: str) -> str:
    return without_injections(text)[0]


def context_chunk(hit: Hit, text: str) -> ContextChunkV1:
    payload = hit.payload
    return ContextChunkV1(
        chunk_id=hit.chunk_id,
        doc_id=payload["doc_id"],
        title=payload.get("title", ""),
        source_uri=payload.get("source_uri", ""),
        heading_path=list(payload.get("heading_path", [])),
        text=text,
        score=hit.score,
    )


def select_context(question: str, hits: Sequence[Hit], token_budget: int) -> list[ContextChunkV1]:
    """The best-supporting sentences of `hits` within `token_budget` tokens, grouped by chunk
    in retrieval order, each chunk's sentences in document order.

    Sentences that share no word with the question are still taken from the best chunk when
    nothing else matches (the question may be phrased in other words than the text).
    A chunk's injection paragraphs are left out first: what a document says to the model is
    never shown to it, nor quoted as an answer."""
    texts = [_without_injections(str(hit.payload.get("text", ""))) for hit in hits]
    ranked = rank_sentences(question, texts)
    useful = [s for s in ranked if s.score > 0] or [s for s in ranked if s.passage == 0]
    chosen: dict[int, list[tuple[int, str]]] = {}
    spent = 0
    for sentence in useful:
        cost = estimate_tokens(sentence.text)
        if spent + cost > token_budget:
            continue  # a shorter sentence further down may still fit
        chosen.setdefault(sentence.passage, []).append((sentence.position, sentence.text))
        spent += cost
    return [
        context_chunk(hits[p], " ".join(text for _, text in sorted(chosen[p])))
        for p in sorted(chosen)
    ]
