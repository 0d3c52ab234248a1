"""Versioned prompt templates: `inference/prompts/<name>/v<N>/` rendered to chat messages.

A template folder holds `system.txt`, `user.txt` and `corrective.txt` (`string.Template`
placeholders `$question`, `$context`, `$feedback`). A new version is a new folder beside the
old one; the version travels in the events and the lineage.

>>> prompt = load_prompt("grounded_answer", "v1")
>>> messages = prompt.render("How many vacation days?", [("c-1", "Staff get 25 days.")])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from string import Template

from inference.exceptions import InferenceError
from inference.generation import ChatMessage

PROMPTS_DIR = Path(__file__).with_name("prompts")
_NAME = re.compile(r"^[a-z0-9_]+$")
_VERSION = re.compile(r"^v[0-9]+$")


class PromptNotFoundError(InferenceError):
    """No template folder for the requested prompt name and version."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    system: Template
    user: Template
    corrective: Template

    def render(
        self,
        question: str,
        sources: Sequence[tuple[str, str]],
        feedback: Sequence[str] = (),
    ) -> list[ChatMessage]:
        """Chat messages for `question` over `sources` ((id, text) pairs); with `feedback`,
        the corrective instructions naming why the previous attempt failed."""
        context = "\n".join(f"[{source_id}] {text}" for source_id, text in sources)
        user = self.user.substitute(question=question, context=context)
        if feedback:
            lines = "\n".join(f"- {reason}" for reason in feedback)
            user += "\n\n" + self.corrective.substitute(feedback=lines)
        return [
            ChatMessage(role="system", content=self.system.substitute().strip()),
            ChatMessage(role="user", content=user.strip()),
        ]


@lru_cache(maxsize=32)
def load_prompt(name: str, version: str) -> PromptTemplate:
    if not _NAME.match(name) or not _VERSION.match(version):
        raise PromptNotFoundError(
            f"prompt {name!r} version {version!r}: names are lower-case words, versions vN"
        )
    folder = PROMPTS_DIR / name / version
    if not folder.is_dir():
        known = sorted(p.relative_to(PROMPTS_DIR).as_posix() for p in PROMPTS_DIR.glob("*/v*"))
        raise PromptNotFoundError(f"no prompt template at {folder}; known: {', '.join(known)}")

    def part(file: str) -> Template:
        return Template((folder / file).read_text(encoding="utf-8"))

    return PromptTemplate(
        name, version, part("system.txt"), part("user.txt"), part("corrective.txt")
    )
