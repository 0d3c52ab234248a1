"""The benchmarks' corpus: seeded site handbooks of one chunk each, and factual questions on them.

Every document describes one site (a unique two-word name) with a few numeric facts, about
95 words (120 tokens), so the chunk stage makes one chunk of it (200-token chunks). The same
seed gives the same documents and questions on every machine, so runs are comparable.

>>> documents = make_corpus(3, seed=7)
>>> documents[0].doc_id, len(make_questions(documents, 5, seed=7))
('sites/site-0000.txt', 5)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_FIRST = (
    "Amber Arctic Basalt Birch Cedar Cobalt Copper Coral Crimson Delta Ember Falcon Fern Flint "
    "Garnet Glacier Granite Harbor Hazel Indigo Ivory Jasper Juniper Lantern Maple Marble "
    "Meadow Nickel Oak Onyx Opal Orchid Pebble Pine Quartz Raven Ruby Sable Saffron Silver "
    "Slate Spruce Summit Thistle Topaz Tundra Umber Velvet Willow Zephyr"
).split()
_SECOND = (
    "Bay Bridge Brook Cliff Cove Crossing Dale Dock Falls Field Ford Forge Gate Glen Grove "
    "Haven Heights Hill Hollow Landing Lane Ledge Mill Moor Park Pass Peak Point Port Quay "
    "Reach Ridge Rise Row Shore Spring Square Station Terrace Vale Valley Wharf Wood Yard"
).split()
_FILLER = (
    "The site follows the group handbook unless this page says otherwise. Managers review these "
    "figures every spring and publish changes on the intranet one month before they apply. "
    "Questions go to the local people team, who answer within two working days."
)


@dataclass(frozen=True)
class SiteDocument:
    doc_id: str
    site: str
    text: str
    facts: dict[str, str]


@dataclass(frozen=True)
class BenchQuestion:
    question: str
    expected_doc: str
    key_fact: str


def _site_names(count: int, rng: random.Random) -> list[str]:
    names = [f"{a} {b}" for a in _FIRST for b in _SECOND]
    if count > len(names):
        raise ValueError(f"at most {len(names)} documents (distinct site names), not {count}")
    rng.shuffle(names)
    return names[:count]


def make_corpus(documents: int, seed: int = 8) -> list[SiteDocument]:
    """`documents` site handbooks, the same ones for the same seed."""
    rng = random.Random(seed)
    corpus = []
    for index, site in enumerate(_site_names(documents, rng)):
        facts = {
            "leave": f"{rng.randint(20, 35)} days",
            "remote": f"{rng.randint(2, 4)} days a week",
            "desks": f"{rng.randint(40, 900)} desks",
            "parking": f"{rng.randint(5, 120)} parking spaces",
            "opening": f"{rng.randint(6, 9)}:{rng.choice(('00', '15', '30', '45'))}",
        }
        text = (
            f"{site} site handbook.\n\n"
            f"Full-time staff at the {site} site receive {facts['leave']} of paid leave per "
            f"year. Employees at {site} may work remotely up to {facts['remote']}. "
            f"The {site} office has {facts['desks']} and {facts['parking']}. "
            f"The {site} building opens at {facts['opening']} on working days. {_FILLER}"
        )
        corpus.append(SiteDocument(f"sites/site-{index:04d}.txt", site, text, facts))
    return corpus


ASKS = {
    "leave": "How many days of paid leave do full-time staff at the {site} site receive?",
    "remote": "How many days a week may employees at {site} work remotely?",
    "desks": "How many desks does the {site} office have?",
    "parking": "How many parking spaces does the {site} office have?",
    "opening": "When does the {site} building open on working days?",
}


def make_questions(corpus: list[SiteDocument], count: int, seed: int = 8) -> list[BenchQuestion]:
    """`count` distinct factual questions (one fact of one site each), seeded."""
    rng = random.Random(seed + 1)
    pairs = [(document, fact) for document in corpus for fact in ASKS]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} questions for {len(corpus)} documents")
    chosen = rng.sample(pairs, count)
    return [
        BenchQuestion(ASKS[fact].format(site=d.site), d.doc_id, d.facts[fact]) for d, fact in chosen
    ]
