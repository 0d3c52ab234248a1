"""A stage's HTTP port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.

A tiny asyncio server (no web framework) that runs beside the consumers in the stage's event
loop, so `/healthz` answering means the loop answers. `/readyz` runs the stage's readiness
checks (broker, and Triton or Qdrant where the stage uses them) concurrently, each bounded by a
timeout: 200 when all pass, else 503, with each check's result as JSON. The port is written to
`<data dir>/run/metrics/<stage>-<pid>.json`, where `ragstream status` finds it.

>>> server = HealthServer("route", {"qdrant": collection_exists})  # doctest: +SKIP
>>> await server.start()  # doctest: +SKIP
>>> server.url  # doctest: +SKIP
'http://127.0.0.1:43117'
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.runtime.runstate import pid_alive
from services.runtime.settings import RuntimeSettings

logger = logging.getLogger("ragstream.health")

#: A readiness check: True when the dependency answers. An exception or timeout counts False.
ReadinessCheck = Callable[[], Awaitable[bool]]

#: The key under which a stage's resources hand their readiness checks to `stage_app`.
READINESS = "readiness"

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves /metrics, /healthz and /readyz of one stage process on `host:port` (0: free)."""

    def __init__(
        self,
        stage: str,
        checks: Mapping[str, ReadinessCheck] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        check_timeout_s: float = 3.0,
    ) -> None:
        self.stage = stage
        self.checks: dict[str, ReadinessCheck] = dict(checks or {})
        self.host = host
        self.requested_port = port
        self.check_timeout_s = check_timeout_s
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HealthServer.port read before start()")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.requested_port)
        except OSError as error:
            if not self.requested_port:
                raise
            # Several processes of a stage on one machine (`serve --workers N`) share the env.
            logger.warning(
                "metrics port %s:%d is taken (%s); serving on a free port instead",
                self.host,
                self.requested_port,
                error.strerror,
            )
            self._server = await asyncio.start_server(self._serve, self.host, 0)
        logger.info("%s: metrics and health on %s", self.stage, self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def readiness(self) -> dict[str, bool]:
        """Each check's result, run concurrently."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._check(self.checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _check(self, check: ReadinessCheck) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), self.check_timeout_s))
        except Exception:  # an unreachable dependency is a "no", not an error of the server
            return False

    async def _respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path == "/healthz":
            body = {"status": "ok", "stage": self.stage, "pid": os.getpid()}
            return 200, "application/json", json.dumps(body).encode()
        if path == "/readyz":
            checks = await self.readiness()
            ready = all(checks.values())
            body = {"ready": ready, "stage": self.stage, "checks": checks}
            return (200 if ready else 503), "application/json", json.dumps(body).encode()
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, target, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method not in ("GET", "HEAD"):
                status, content_type, body = 405, "text/plain", b"GET only\n"
            else:
                status, content_type, body = await self._respond(target.split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that sent no complete request gets no answer
        except ConnectionError:
            pass
        finally:
            writer.close()


class _ModelServer(Protocol):
    async def wait_until_ready(
        self, timeout_s: float = ..., models: Sequence[str] | None = ...
    ) -> None: ...


def triton_check(client: _ModelServer, models: Sequence[str]) -> ReadinessCheck:
    """Readiness of a stage's Triton models: asked once, briefly."""

    async def triton() -> bool:
        await client.wait_until_ready(timeout_s=0.5, models=list(models))
        return True

    return triton


def endpoint_file(data_dir: Path, stage: str, pid: int) -> Path:
    return data_dir / "run" / "metrics" / f"{stage}-{pid}.json"


def write_endpoint_file(data_dir: Path, server: HealthServer) -> Path:
    """Say where this process serves its metrics, for `ragstream status` and scrapers."""
    pid = os.getpid()
    path = endpoint_file(data_dir, server.stage, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "stage": server.stage,
        "pid": pid,
        "port": server.port,
        "metrics_url": f"{server.url}/metrics",
        "healthz_url": f"{server.url}/healthz",
        "readyz_url": f"{server.url}/readyz",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    tmp.replace(path)
    return path


def stage_endpoints(data_dir: Path, stage: str) -> list[dict[str, Any]]:
    """The endpoint files of `stage`'s live processes, by pid."""
    found = []
    for path in sorted((data_dir / "run" / "metrics").glob(f"{stage}-*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if info.get("stage") == stage and pid_alive(int(info.get("pid", 0))):
            found.append(info)
    return found


@asynccontextmanager
async def serving_health(
    stage: str, settings: RuntimeSettings, checks: Mapping[str, ReadinessCheck]
) -> AsyncIterator[HealthServer]:
    """A stage's health server for a block, its endpoint file written while it runs."""
    server = HealthServer(stage, checks, host=settings.metrics_host, port=settings.metrics_port)
    await server.start()
    path = write_endpoint_file(settings.data_dir.resolve(), server)
    try:
        yield server
    finally:
        path.unlink(missing_ok=True)
        await server.stop()
