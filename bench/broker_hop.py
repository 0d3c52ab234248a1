"""Benchmark: one hop's latency through the embedded broker at a consumer's fetch wait.

A consumer at a topic's tail (no group, `fetch_max_wait_ms` = W) and a producer (acks=all,
no linger) on an embedded Tansu of its own: R records, each sent after a random pause of
50-150 ms (so it arrives at a random point of the consumer's fetch), each timed from its send
to the consumer handing it over. A stage's hop adds its own handling and publishing to this;
this is the broker's and the client's part alone, the floor under each stage's `wait` in the
query path's lineage.

    .venv/bin/python bench/broker_hop.py                    # W = 5, 25, 100, 250 ms
    .venv/bin/python bench/broker_hop.py --waits 25 --records 200 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.runtime.embedded_broker import EmbeddedBroker


async def _hops(bootstrap: str, wait_ms: int, records: int, seed: int) -> dict[str, Any]:
    pauses = random.Random(seed)
    topic = f"hop-{wait_ms}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=wait_ms,
    )
    try:
        await producer.send_and_wait(topic, b"warm-up")
        await consumer.start()
        await consumer.getone()
        hops, acks = [], []
        for _ in range(records):
            await asyncio.sleep(pauses.uniform(0.05, 0.15))
            sent = time.perf_counter()
            await producer.send_and_wait(topic, b"x" * 300)
            acks.append((time.perf_counter() - sent) * 1000)
            await consumer.getone()
            hops.append((time.perf_counter() - sent) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    q = statistics.quantiles(hops, n=20)
    return {
        "fetch_max_wait_ms": wait_ms,
        "records": records,
        "hop_mean_ms": round(statistics.mean(hops), 1),
        "hop_p50_ms": round(statistics.median(hops), 1),
        "hop_p95_ms": round(q[18], 1),
        "hop_max_ms": round(max(hops), 1),
        "produce_ack_mean_ms": round(statistics.mean(acks), 1),
    }


async def measure(waits: list[int], records: int, seed: int) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
            for wait_ms in waits:
                row = await _hops(broker.bootstrap_servers, wait_ms, records, seed)
                rows.append(row)
                print(
                    f"fetch wait {wait_ms:4d} ms: send to consumed mean {row['hop_mean_ms']} "
                    f"p50 {row['hop_p50_ms']} p95 {row['hop_p95_ms']} max {row['hop_max_ms']} "
                    f"ms (the send's ack {row['produce_ack_mean_ms']} ms)",
                    file=sys.stderr,
                    flush=True,
                )
    return {"points": rows, "command": "python bench/broker_hop.py " + " ".join(sys.argv[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, nargs="+", default=[5, 25, 100, 250],
                        help="the consumer's fetch_max_wait_ms at each point")  # fmt: skip
    parser.add_argument("--records", type=int, default=100, help="records timed at each point")
    parser.add_argument("--seed", type=int, default=7, help="seed of the pauses between sends")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report = asyncio.run(measure(args.waits, args.records, args.seed))
    if args.json:
        print(json.dumps(report))
    else:
        print("| fetch wait | hop mean | p50 | p95 | max | send's ack mean |")
        print("| --- | --- | --- | --- | --- | --- |")
        columns = ("hop_mean_ms", "hop_p50_ms", "hop_p95_ms", "hop_max_ms", "produce_ack_mean_ms")
        for row in report["points"]:
            cells = [f"{row['fetch_max_wait_ms']} ms", *(str(row[c]) for c in columns)]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
