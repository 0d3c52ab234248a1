"""Benchmark: chunks per second through the embed stage with 1 and then 2 workers.

One broker (Tansu) and one Triton (embedder only) serve both runs. For each worker count,
`ragstream serve embed --workers N` runs as operators run it (N processes, one consumer group);
C chunk events are published straight to the chunks topic and timed until every chunk's vector
is on the chunk-vectors topic. The ratio is what the second worker adds on this machine.

    HF_HUB_OFFLINE=1 python bench/embed_workers.py --chunks 400
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer

from bench.document_path import fresh_broker
from bench.embed import make_chunks
from bench.upstream import BENCH
from contracts.registry import TOPICS
from contracts.v1 import ChunkV1
from inference.server import TritonServer
from services.cli.supervisor import child_env
from services.runtime.broker import consumer_group
from services.runtime.publishing import event_bytes
from services.runtime.topic_reader import TopicTail

GROUP = consumer_group("embed", TOPICS.chunks)
LIMITS = (
    "On this 2-core machine Triton's CPU execution of the embedder shares the two cores with "
    "the workers, the broker and this client: the model is the bottleneck, so a second worker "
    "adds consumers but no compute. Expect a ratio near 1; on a GPU (or more cores) the "
    "second worker overlaps decoding, publishing and commits with the first one's Triton call."
)


def chunk_events(tenant: str, texts: list[str]) -> list[ChunkV1]:
    events = []
    for i, text in enumerate(texts):
        digest = hashlib.sha256(f"{tenant}/{i}".encode()).hexdigest()
        chunk_id = "-".join((digest[:8], digest[8:12], digest[12:16], digest[16:20], digest[20:32]))
        events.append(
            ChunkV1(
                tenant_id=tenant, correlation_id=f"{tenant}-{i}", produced_by=BENCH,
                chunk_id=chunk_id, doc_id=f"bench/{i}.txt", doc_version=1, position=0,
                text=text, token_count=max(1, len(text.split())),
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
            )
        )  # fmt: skip
    return events


async def time_embed(bootstrap: str, texts: list[str], timeout_s: float) -> float:
    """Seconds from the first publish until every chunk's vector is on the output topic."""
    tenant = f"bench-{time.time_ns()}"
    events = chunk_events(tenant, texts)
    waiting = {e.chunk_id for e in events}
    async with TopicTail(bootstrap, [TOPICS.chunk_vectors.name]) as tail:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        started = time.perf_counter()
        sends = [
            await producer.send(TOPICS.chunks.name, event_bytes(e), key=TOPICS.chunks.key_bytes(e))
            for e in events
        ]
        await asyncio.gather(*sends)
        await producer.stop()
        async for record in tail.records(timeout_s):
            payload = json.loads(record.value)
            if payload.get("tenant_id") == tenant and "chunk" in payload:
                waiting.discard(payload["chunk"]["chunk_id"])
                if not waiting:
                    return time.perf_counter() - started
    raise TimeoutError(f"{len(waiting)} chunks not embedded within {timeout_s} s")


def _assigned(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return any(
        "Setting newly assigned partitions" in line and line.endswith(f"for group {GROUP}")
        for line in text.splitlines()
    )


def measure(workers: int, env: dict[str, str], data_dir: Path, args: argparse.Namespace) -> float:
    ready = data_dir / "ready"
    with open(data_dir / f"serve-{workers}.log", "ab") as log:
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli.main",
                "serve",
                "embed",
                "--workers",
                str(workers),
            ],
            env={**env, "RAGSTREAM_READY_DIR": str(ready)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while len(list(ready.glob("embed-*"))) < workers:
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embed did not start; see {data_dir}/serve-{workers}.log")
            time.sleep(0.2)
        logs = (
            [data_dir / "logs" / f"embed-worker-{i}.log" for i in range(workers)]
            if workers > 1
            else [data_dir / f"serve-{workers}.log"]
        )
        while not all(_assigned(log) for log in logs):  # every worker joined: the group settled
            if time.monotonic() > deadline:
                raise RuntimeError(f"embed workers did not join their group; see {data_dir}")
            time.sleep(0.2)
        bootstrap = env["RAGSTREAM_BOOTSTRAP_SERVERS"]
        texts = make_chunks(args.chunks, args.words)
        asyncio.run(time_embed(bootstrap, texts[:128], 300))  # warm-up
        seconds = asyncio.run(time_embed(bootstrap, texts, 900))
        return args.chunks / seconds
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)


def run(args: argparse.Namespace) -> dict[str, object]:
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        models_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
        with TritonServer(models_dir, work_dir=data_dir / "triton", models=("embedder",)) as triton:
            for workers in (1, 2):  # each on a new broker: an old one's records slow the next
                with fresh_broker() as bootstrap:
                    env = child_env(
                        RAGSTREAM_BOOTSTRAP_SERVERS=bootstrap,
                        RAGSTREAM_DATA_DIR=str(data_dir),
                        RAGSTREAM_TRITON_URL=triton.grpc_url,
                    )
                    rates[workers] = measure(workers, env, data_dir, args)
    return {
        "chunks": args.chunks,
        "words_per_chunk": args.words,
        "cpu_cores": os.cpu_count(),
        "one_worker_chunks_per_s": round(rates[1], 1),
        "two_workers_chunks_per_s": round(rates[2], 1),
        "two_over_one": round(rates[2] / rates[1], 2),
        "limits": LIMITS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--words", type=int, default=120, help="words per chunk")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run(args)
    print(json.dumps(report) if args.json else "\n".join(f"{k:26} {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
