"""Benchmark: how throughput grows with embed workers and with concurrent clients.

One Triton (embedder) serves every point. For each embed worker count the stages start
afresh (`ragstream up --scale embed=N`'s processes, own data directory, own broker) and the
same documents are timed through the document path (chunks/s); on the one-worker stack, fresh
questions are then asked by 1, 8, 32 and 100 concurrent clients (answers/s). A point
saturates when it gains less than SATURATION_GAIN over the previous one; the first such point
is marked on the PNG.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.document_path import fresh_broker, stages_running, time_path, triton_running
from bench.measure import spread
from services.cli.ask_cmd import ask_questions

WORKERS = (1, 2, 4)
CLIENTS = (1, 8, 32, 100)
SATURATION_GAIN = 0.10
WARM_UP_DOCUMENTS = 32


def questions_per_point(clients: int, quick: bool) -> int:
    """Enough questions that every client asks several (and a 1-client point is not tiny)."""
    return max(3 * clients, 40) if quick else max(4 * clients, 100)


def saturation(points: list[tuple[int, float]]) -> int | None:
    """The first x whose value gains less than SATURATION_GAIN over the previous point's.

    >>> saturation([(1, 10.0), (2, 15.0), (4, 15.5)])
    4
    """
    for (_, before), (x, value) in pairwise(points):
        if value < before * (1 + SATURATION_GAIN):
            return x
    return None


def _answers_per_s(
    bootstrap: str, tenant: str, questions: list[str], clients: int
) -> dict[str, Any]:
    started = time.perf_counter()
    results = asyncio.run(ask_questions(bootstrap, tenant, questions, 120, clients))
    seconds = time.perf_counter() - started
    answered = [r for r in results if r.answer is not None]
    return {
        "clients": clients,
        "questions": len(questions),
        "answered": len(answered),
        "answers_per_s": round(len(answered) / seconds, 2),
        "client_latency_ms": spread([r.client_latency_ms for r in answered]),
    }


def scaling_figures(
    work: Path,
    texts: list[str],
    questions: dict[int, list[str]],
    env: dict[str, str],
    command: str,
) -> dict[str, Any]:
    """Chunks/s per embed worker count, answers/s per client count, and where each saturates."""
    documents: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    with triton_running(work / "scaling") as triton_url:
        for workers in WORKERS:
            data_dir = work / f"scaling-{workers}"
            with (
                fresh_broker() as bootstrap,
                stages_running(bootstrap, data_dir, triton_url, env, {"embed": workers}),
            ):
                warm = [f"{t} (warm-up {workers})" for t in texts[:WARM_UP_DOCUMENTS]]
                asyncio.run(time_path(bootstrap, warm, 600, f"scaling-warm-{workers}"))
                seconds, chunks = asyncio.run(time_path(bootstrap, texts, 1800, "scaling"))
                documents.append({"embed_workers": workers, "chunks": chunks,
                                  "seconds": round(seconds, 1),
                                  "chunks_per_s": round(chunks / seconds, 1)})  # fmt: skip
                if workers == 1:
                    clients = [
                        _answers_per_s(bootstrap, "scaling", questions[n], n) for n in CLIENTS
                    ]
    return {
        "documents": documents,
        "documents_saturate_at": saturation(
            [(d["embed_workers"], d["chunks_per_s"]) for d in documents]
        ),
        "clients": clients,
        "clients_saturate_at": saturation([(c["clients"], c["answers_per_s"]) for c in clients]),
        "saturation_gain": SATURATION_GAIN,
        "command": command,
    }


def _panel(axes: Any, points: list[tuple[int, float]], saturated: int | None, xlabel: str,
           ylabel: str) -> None:  # fmt: skip
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    axes.plot(xs, ys, marker="o")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_xticks(xs)
    axes.set_xticklabels([str(x) for x in xs])
    axes.set_ylim(bottom=0, top=max(ys, default=1) * 1.3)
    axes.grid(alpha=0.3)
    if saturated is not None:
        y = dict(points)[saturated]
        axes.annotate(
            f"saturates at {saturated}\n(< {SATURATION_GAIN:.0%} gain)",
            xy=(saturated, y),
            xytext=(0.45, 0.9),
            textcoords="axes fraction",
            arrowprops={"arrowstyle": "->"},
        )


def plot(figures: dict[str, Any], png: Path, title: str) -> Path:
    """Both curves, two subplots, the saturation points annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    docs = [(d["embed_workers"], d["chunks_per_s"]) for d in figures["documents"]]
    _panel(left, docs, figures["documents_saturate_at"], "embed workers", "document path, chunks/s")
    asks = [(c["clients"], c["answers_per_s"]) for c in figures["clients"]]
    _panel(right, asks, figures["clients_saturate_at"], "concurrent clients", "answers/s")
    right.set_xscale("log")
    right.set_xticks([c for c, _ in asks])
    right.set_xticklabels([str(c) for c, _ in asks])
    figure.suptitle(title)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png
