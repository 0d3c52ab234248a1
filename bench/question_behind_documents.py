"""Benchmark: a question's Triton embed call while document requests run back to back.

The Triton-level floor of the backfill isolation target (issue 8): embed sends a document
batch as requests of `document_request_size` chunks one after another, its `QueriesFirst` gate
holds the next one while a question is in flight, and Triton serves the question's priority
first, but it cannot pre-empt a running request. This runs one `tritonserver` per setting of
the embedder's dynamic-batching queue delay, alternately, each with the same client as embed
uses: questions one at a time (0.7 s apart, the rest of their path) alone, then while a
backfill of ~200-token chunks runs. Printed: each setting's p50 / p95 / max, alone and during.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/question_behind_documents.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/question_behind_documents.py --delays-us 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inference.server as triton_server
from bench.embed import make_chunks
from bench.measure import spread
from inference.client import EmbedPriority
from services.embed.app import embed_client
from services.runtime.settings import EmbedSettings

DATA_DIR = Path(
    os.environ.get("RAGSTREAM_DATA_DIR", Path(__file__).resolve().parents[1] / ".ragstream")
)
QUESTION_GAP_S = 0.7
#: Longer than a question behind one whole document request (8 chunks, ~280 ms here) takes.
SLOW_MS = 400
_RENDER = triton_server.render_model_repository
#: Changes to the embedder's rendered config.pbtxt (the committed one is untouched), by name.
VARIANTS: dict[str, Callable[[str], str]] = {
    "committed": lambda text: text,
    "no-priority": lambda text: re.sub(r"\n\s*(default_)?priority_levels?: \d+", "", text),
    "no-queue-delay": lambda text: re.sub(
        r"max_queue_delay_microseconds: \d+", "max_queue_delay_microseconds: 0", text
    ),
}


def render_as(variant: str) -> None:
    """Have `TritonServer` render the embedder's config as `variant` says."""

    def render(target: Path, device: triton_server.Device = "auto") -> Path:
        repository = _RENDER(target, device)
        config = repository / "embedder" / "config.pbtxt"
        config.write_text(VARIANTS[variant](config.read_text()))
        return repository

    triton_server.render_model_repository = render


def summary(values: list[float]) -> str:
    p = spread(values)
    slow = sum(v > SLOW_MS for v in values)
    return (
        f"p50 / p95 / max {p['p50']:.0f} / {p['p95']:.0f} / {max(values):.0f} ms, "
        f"{slow} of {len(values)} over {SLOW_MS} ms"
    )


async def measure(url: str, args: argparse.Namespace) -> tuple[list[float], list[float], float]:
    """Question latencies alone and during the backfill, and the backfill's chunks/s."""
    sizes = (
        {"document_request_size": args.document_request_size} if args.document_request_size else {}
    )
    settings = EmbedSettings(bootstrap_servers="localhost:1", **sizes)
    client = embed_client(settings, url)
    await client.warm_up()
    chunks = make_chunks(settings.embed_batch_size * 64, args.words)
    stop = asyncio.Event()
    embedded = 0

    async def backfill() -> None:
        nonlocal embedded
        size = settings.embed_batch_size
        for start in range(0, len(chunks), size):
            if stop.is_set():
                return
            await client.embed(chunks[start : start + size], priority=EmbedPriority.DOCUMENT)
            embedded += size

    async def questions(count: int) -> list[float]:
        latencies = []
        for n in range(count):
            started = time.perf_counter()
            text = f"How many parking spaces come with lease {n}?"
            await client.embed([text], priority=EmbedPriority.QUERY)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(QUESTION_GAP_S)
        return latencies

    try:
        alone = await questions(args.questions // 3)
        started = time.perf_counter()
        running = asyncio.create_task(backfill())
        during = await questions(args.questions)
        stop.set()
        await running
        return alone, during, embedded / (time.perf_counter() - started)
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default="committed,no-priority",
        help=f"embedder configs to compare, comma-separated, of {', '.join(VARIANTS)}",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each")
    parser.add_argument("--questions", type=int, default=60, help="asked during the backfill")
    parser.add_argument(
        "--document-request-size",
        type=int,
        default=0,
        help="chunks per document request (default: RAGSTREAM_DOCUMENT_REQUEST_SIZE's, 8)",
    )
    parser.add_argument("--words", type=int, default=150, help="words a chunk (~1.3 tokens each)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    for round_ in range(1, args.rounds + 1):
        for variant in variants:
            render_as(variant)
            work = Path(tempfile.mkdtemp(prefix="ragstream-bench-"))
            server = triton_server.TritonServer(DATA_DIR, device="cpu", work_dir=work)
            with server:
                alone, during, rate = asyncio.run(measure(server.grpc_url, args))
            print(
                f"round {round_}, {variant}: alone {summary(alone)}; during the "
                f"backfill ({rate:.1f} chunks/s) {summary(during)}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
