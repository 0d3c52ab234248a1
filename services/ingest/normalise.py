"""Pure core of ingest: normalise text and HTML into tidy, structured Markdown."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

from bs4 import BeautifulSoup, Comment, NavigableString, PageElement, Tag

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t\u00a0]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_INVISIBLE = {"Cc", "Cf", "Cs"}  # control, format (zero-width …), surrogate
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = set(
    "p div section article main header footer blockquote table tr ul ol dl dt dd figure "
    "figcaption aside nav body".split()
)
_DROPPED = {"script", "style", "noscript", "template", "head", "iframe", "svg", "canvas"}
MAX_HTML_DEPTH = 200


@dataclass(frozen=True)
class Rejection:
    """Why an input is not accepted: goes to the DLQ as error kind `rejected`."""

    reason: str


def normalise_text(text: str) -> str:
    """NFC, LF line ends, no control characters, no trailing spaces, at most one blank line."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in _INVISIBLE)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _BLANK_RUNS.sub("\n\n", text).strip()


def normalise_question(question: str) -> str:
    return " ".join(normalise_text(question).split())


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _depth_ok(root: Tag) -> bool:
    stack = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_HTML_DEPTH:
            return False
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tag))
    return True


def _inline_text(node: Tag) -> str:
    return " ".join(node.get_text(" ", strip=True).split())


def _render(node: Tag, out: list[str]) -> None:
    for child in node.children:
        if isinstance(child, NavigableString):
            if text := " ".join(str(child).split()):
                out.append(text + " ")
            continue
        if not isinstance(child, Tag) or child.name in _DROPPED:
            continue
        if child.name in _HEADINGS:
            out.append(f"\n\n{'#' * _HEADINGS[child.name]} {_inline_text(child)}\n\n")
        elif child.name == "li":
            out.append(f"- {_inline_text(child)}\n")
        elif child.name == "pre":
            out.append(f"\n\n```\n{child.get_text()}\n```\n\n")
        elif child.name == "br":
            out.append("\n")
        elif child.name in _BLOCKS:
            out.append("\n\n")
            _render(child, out)
            out.append("\n\n")
        else:
            _render(child, out)


_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def _hidden(node: PageElement) -> bool:
    """What a reader of the page never sees: comments, and elements hidden by attribute or
    inline style. Indexing it would make invisible text searchable and citable (a place to
    hide instructions for a model, or facts a reader cannot check)."""
    if isinstance(node, Comment):
        return True
    if not isinstance(node, Tag):
        return False
    style = str(node.get("style") or "")
    return (
        node.has_attr("hidden")
        or str(node.get("aria-hidden", "")).lower() == "true"
        or bool(_HIDDEN_STYLE.search(style))
    )


def html_to_markdown(html: str) -> str | Rejection:
    """Turn the visible part of HTML into Markdown that keeps its structure: headings,
    paragraphs, lists, code (comments and hidden elements dropped)."""
    soup = BeautifulSoup(html, "html.parser")
    if not _depth_ok(soup):
        return Rejection(f"HTML is nested deeper than {MAX_HTML_DEPTH} elements")
    for node in [n for n in soup.descendants if _hidden(n)]:
        node.extract()
    out: list[str] = []
    _render(soup, out)
    return normalise_text("".join(out))


def utf8_problem(text: str) -> str | None:
    """A reason when `text` cannot be encoded as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"content is not valid Unicode: {exc.reason} at character {exc.start}"
    return None
