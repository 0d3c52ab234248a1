"""Markdown structure: headings, paragraphs, lists and code blocks, each with its heading path."""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Block:
    """A unit of text that chunking keeps together when it can."""

    heading_path: tuple[str, ...]
    text: str


def _flush(lines: list[str], path: tuple[str, ...], blocks: list[Block]) -> None:
    text = "\n".join(lines).strip()
    if text:
        blocks.append(Block(path, text))
    lines.clear()


def split_blocks(text: str, markdown: bool = True) -> list[Block]:
    """Blocks in document order; a heading changes the path of the blocks after it.

    >>> [b.heading_path for b in split_blocks("# A\\n\\ntext\\n\\n## B\\n\\n- x\\n- y")]
    [('A',), ('A', 'B')]
    """
    blocks: list[Block] = []
    headings: list[str] = []
    current: list[str] = []
    in_code = in_list = False
    for line in text.split("\n"):
        path = tuple(headings)
        if _FENCE.match(line):
            if not in_code:
                _flush(current, path, blocks)
            current.append(line)
            if in_code:
                _flush(current, path, blocks)
            in_code = not in_code
            continue
        if in_code:
            current.append(line)
            continue
        heading = _HEADING.match(line) if markdown else None
        if heading:
            _flush(current, path, blocks)
            level = len(heading.group(1))
            headings[level - 1 :] = [heading.group(2)]
            in_list = False
            continue
        if not line.strip():
            if not in_list:
                _flush(current, path, blocks)
            continue
        is_item = bool(_LIST_ITEM.match(line))
        if is_item and not in_list:
            _flush(current, path, blocks)
        elif in_list and not is_item and not line.startswith((" ", "\t")):
            _flush(current, path, blocks)
        in_list = is_item or (in_list and line.startswith((" ", "\t")))
        current.append(line)
    _flush(current, tuple(headings), blocks)
    return blocks
