"""`ragstream demo`: the whole job once — start everything, ingest the examples, ask the example
questions, print the answers and a summary, stop. Non-zero exit when any part failed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from services.cli.ask_cmd import ask_questions, render_answer
from services.cli.eval_cmd import render_report
from services.cli.evaluation import check_thresholds, evaluate, load_questions, load_thresholds
from services.cli.ingest_cmd import ingest_paths
from services.cli.status_cmd import collect_status
from services.runtime.runstate import read_state
from services.runtime.settings import RuntimeSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_TENANT = "demo"
START_TIMEOUT_S = 900  # the very first start converts the LLM checkpoint


class DemoFailedError(RuntimeError):
    """A part of the demo failed; the message says which and where to look."""


@contextmanager
def running_pipeline(settings: RuntimeSettings, console: Console) -> Iterator[str]:
    """The running `ragstream up` if there is one (left running), else one started here and
    stopped at the end. Yields the bootstrap servers once every part is ready."""
    data_dir = settings.data_dir.resolve()
    if read_state(data_dir):
        console.print("using the ragstream already running (it stays up afterwards)")
        yield _wait_ready(settings, None, console)
        return
    log = data_dir / "logs" / "demo-up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "up", "--broker-port", "0"],
            env={**os.environ, "RAGSTREAM_DATA_DIR": str(data_dir)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield _wait_ready(settings, up, console, log)
    finally:
        console.print("stopping ragstream …")
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


def _wait_ready(
    settings: RuntimeSettings,
    up: subprocess.Popen[bytes] | None,
    console: Console,
    log: Path | None = None,
) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    status: dict[str, object] = {}
    with console.status("starting broker, Triton and the stages …"):
        while time.monotonic() < deadline:
            if up is not None and up.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise DemoFailedError(f"`ragstream up` exited with {up.returncode}:\n{tail}")
            if read_state(settings.data_dir.resolve()):
                status = collect_status(settings, window_s=0)
                if status.get("ready"):
                    return str(status["bootstrap_servers"])
            time.sleep(1.0)
    raise DemoFailedError(f"not ready after {START_TIMEOUT_S} s; last status: {status}")


async def _ingest_and_ask(bootstrap: str, console: Console, timeout_s: float) -> list[str]:
    """Ingest and ask; the failures found (empty when all went well)."""
    failures: list[str] = []
    report = await ingest_paths(
        bootstrap, [EXAMPLES / "corpus"], DEMO_TENANT, True, timeout_s, console
    )
    counts = report.counts()
    console.print(f"ingested {len(report.outcomes)} documents: {dict(counts)}")
    through = counts["done"] + counts["unchanged"]
    if through != len(report.outcomes):
        failures.append(f"ingest: only {through} of {len(report.outcomes)} documents indexed")
    specs = load_questions(EXAMPLES / "questions.jsonl")
    results = await ask_questions(bootstrap, DEMO_TENANT, specs, timeout_s, concurrency=4)
    for result in results:
        console.rule(result.question)
        render_answer(console, result)
    summary = evaluate(results, specs)
    below = check_thresholds(summary, load_thresholds(EXAMPLES / "eval_thresholds.json"))
    render_report(console, summary, below)
    failures += [f"eval: {line}" for line in below]
    failures += [f"ask: no answer to {r.question!r}" for r in results if r.timed_out]
    return failures


def run_demo(settings: RuntimeSettings, console: Console, timeout_s: float = 300.0) -> int:
    started = time.monotonic()
    try:
        with running_pipeline(settings, console) as bootstrap:
            failures = asyncio.run(_ingest_and_ask(bootstrap, console, timeout_s))
    except DemoFailedError as error:
        console.print(f"[red]demo failed:[/] {error}")
        return 1
    elapsed = time.monotonic() - started
    if failures:
        console.print("[red]demo failed:[/]\n  " + "\n  ".join(failures))
        return 1
    console.print(f"[green]demo passed[/] in {elapsed:.0f} s")
    return 0
