"""`ragstream up`, `serve` and `broker`: the processes of the embedded default."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from services.cli.supervisor import Supervisor, SupervisorGaveUp, child_env, stage_command
from services.runtime.embedded_broker import EmbeddedBroker, free_port
from services.runtime.exceptions import StoppedWhileStarting
from services.runtime.kafka_admin import ensure_topics, wait_for_broker
from services.runtime.runstate import clear_state, read_state, write_state
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import NEEDS_TRITON, STAGES, load_stage_app

if TYPE_CHECKING:
    from inference.server import TritonServer

console = Console(stderr=True)


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGINT to leave the supervision loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start_embedded_broker(data_dir: Path, port: int) -> EmbeddedBroker:
    if port and not _port_free(port):
        console.print(f"[yellow]port {port} is taken; the embedded broker takes a free port[/]")
        port = free_port()
    broker = EmbeddedBroker(port=port, log_path=data_dir / "logs" / "broker.log")
    with console.status(f"starting the embedded Kafka broker (Tansu) on 127.0.0.1:{broker.port}"):
        broker.start()
    return broker


def start_triton(data_dir: Path) -> TritonServer:
    from inference.server import TritonServer

    server = TritonServer(data_dir)
    with console.status(
        "starting Triton (embedder, generator); the first start converts the LLM (~30 s)"
    ):
        server.start()
    console.print(f"triton [bold]{server.grpc_url}[/] (grpc), {server.http_url} (http)")
    return server


def ready_stages(ready_dir: Path, pids: dict[str, list[int]]) -> dict[str, bool]:
    return {
        stage: bool(stage_pids)
        and all((ready_dir / f"{stage}-{pid}").exists() for pid in stage_pids)
        for stage, stage_pids in pids.items()
    }


def run_up(settings: RuntimeSettings, scale: dict[str, int], broker_port: int) -> int:
    data_dir = settings.data_dir.resolve()
    if running := read_state(data_dir):
        console.print(
            f"[red]ragstream is already running[/] (pid {running['supervisor_pid']}, broker "
            f"{running['bootstrap_servers']}); stop it with Ctrl-C in its terminal first"
        )
        return 1
    ready_dir = data_dir / "run" / "ready"
    ready_dir.mkdir(parents=True, exist_ok=True)
    for marker in ready_dir.iterdir():
        marker.unlink()
    signal.signal(signal.SIGTERM, _raise_stop)
    broker: EmbeddedBroker | None = None
    triton: TritonServer | None = None
    supervisor = Supervisor(console)
    try:
        if settings.bootstrap_servers:
            bootstrap = settings.bootstrap_servers
            wait_for_broker(bootstrap, 30)
        else:
            broker = start_embedded_broker(data_dir, broker_port)
            bootstrap = broker.bootstrap_servers
        created = ensure_topics(bootstrap, partitions_override=settings.partitions_override)
        console.print(f"broker [bold]{bootstrap}[/]: {len(created)} topics created")
        triton_url = settings.triton_url
        if not triton_url and NEEDS_TRITON & set(STAGES):
            triton = start_triton(data_dir)
            triton_url = triton.grpc_url
        env = child_env(
            RAGSTREAM_BOOTSTRAP_SERVERS=bootstrap,
            RAGSTREAM_DATA_DIR=str(data_dir),
            RAGSTREAM_READY_DIR=str(ready_dir),
            **({"RAGSTREAM_TRITON_URL": triton_url} if triton_url else {}),
        )
        for stage in STAGES:
            for index in range(scale.get(stage, 1)):
                supervisor.add(
                    stage, stage_command(stage), data_dir / "logs" / f"{stage}-{index}.log", env
                )
        state = {
            "supervisor_pid": os.getpid(),
            "bootstrap_servers": bootstrap,
            "broker_pid": broker.pid if broker else None,
            "triton_grpc_url": triton_url or None,
            "triton_http_url": triton.http_url if triton else None,
            "stages": supervisor.pids(),
            "logs": str(data_dir / "logs"),
            "ready_dir": str(ready_dir),
            "started_at": datetime.now(UTC).isoformat(),
        }
        write_state(data_dir, state)
        _wait_until_ready(supervisor, ready_dir, broker)
        _print_up_table(bootstrap, supervisor, data_dir)
        while True:
            time.sleep(0.5)
            if broker is not None and not broker.alive():
                console.print("[red]the embedded broker stopped; stopping everything[/]")
                return 1
            if triton is not None and not triton.running:
                console.print(
                    f"[red]tritonserver stopped; stopping everything[/]\n{triton.log_tail()}"
                )
                return 1
            if supervisor.check():
                state["stages"] = supervisor.pids()
                write_state(data_dir, state)
    except (KeyboardInterrupt, _Stop):
        console.print("stopping ragstream …")
        return 0
    except SupervisorGaveUp as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        supervisor.stop()
        if triton is not None:
            triton.stop()
        if broker is not None:
            broker.stop()
        clear_state(data_dir)


def _wait_until_ready(
    supervisor: Supervisor, ready_dir: Path, broker: EmbeddedBroker | None
) -> None:
    with console.status("starting stages …") as status:
        while True:
            ready = ready_stages(ready_dir, supervisor.pids())
            if all(ready.values()):
                return
            supervisor.check()
            waiting = ", ".join(stage for stage, ok in ready.items() if not ok)
            status.update(f"starting stages … waiting for {waiting}")
            time.sleep(0.2)


def _print_up_table(bootstrap: str, supervisor: Supervisor, data_dir: Path) -> None:
    table = Table(title="ragstream is up", show_lines=False)
    table.add_column("component")
    table.add_column("pids")
    table.add_row("broker", bootstrap)
    for stage, pids in supervisor.pids().items():
        table.add_row(stage, ", ".join(map(str, pids)))
    console.print(table)
    console.print(
        f"logs in {data_dir / 'logs'}; in another terminal: "
        "[bold]ragstream ingest examples/corpus --tenant demo --wait[/]; Ctrl-C stops everything"
    )
    console.print("[green]ready[/]")


def run_serve(stage: str, workers: int, settings: RuntimeSettings) -> int:
    if workers > 1:
        return _serve_workers(stage, workers, settings)
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s {stage}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    app = load_stage_app(stage)
    if settings.ready_dir is not None:
        marker = settings.ready_dir / f"{stage}-{os.getpid()}"

        @app.after_startup
        async def _mark_ready() -> None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

        @app.on_shutdown
        async def _unmark() -> None:
            marker.unlink(missing_ok=True)

    try:
        asyncio.run(app.run())
    except StoppedWhileStarting as stopped:
        logging.getLogger(f"ragstream.{stage}").info("%s; nothing was consumed", stopped)
    return 0


def _serve_workers(stage: str, workers: int, settings: RuntimeSettings) -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    supervisor = Supervisor(console)
    logs = settings.data_dir.resolve() / "logs"
    try:
        for index in range(workers):
            supervisor.add(
                stage, stage_command(stage), logs / f"{stage}-worker-{index}.log", child_env()
            )
        console.print(
            f"{stage}: {workers} workers, pids {supervisor.pids()[stage]}; logs in {logs}"
        )
        while True:
            time.sleep(0.5)
            supervisor.check()
    except (KeyboardInterrupt, _Stop):
        return 0
    except SupervisorGaveUp as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    finally:
        supervisor.stop()


def run_broker(settings: RuntimeSettings, port: int) -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    broker = start_embedded_broker(settings.data_dir.resolve(), port)
    try:
        created = ensure_topics(
            broker.bootstrap_servers, partitions_override=settings.partitions_override
        )
        console.print(
            f"[green]broker ready[/] on [bold]{broker.bootstrap_servers}[/] "
            f"({len(created)} topics created; topics live in memory); Ctrl-C stops it"
        )
        print(broker.bootstrap_servers, flush=True)
        while broker.alive():
            time.sleep(0.5)
        console.print("[red]the broker exited[/]")
        return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    finally:
        broker.stop()
