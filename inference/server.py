"""Runs the bundled tritonserver on the model repository: start, wait until ready, stop."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from inference.exceptions import TritonStartError
from inference.repository import (
    Device,
    locate_triton,
    prepare_python_backend,
    render_model_repository,
)
from services.runtime.children import die_with_parent

MODELS = ("embedder", "generator")
_LOG_TAIL_LINES = 40


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TritonServer:
    """The `tritonserver` process from the nvidia-pytriton wheel, serving embedder and generator.

    Ports left as None are picked free at start. Readiness means every model reports ready.
    Converted models are cached under `data_dir/models`; the rendered repository, backend and
    log go to `work_dir` (default `data_dir/triton`; give each concurrent server its own).

    >>> with TritonServer(data_dir=Path(".ragstream")) as server:
    ...     client = TritonClient(server.grpc_url)
    """

    def __init__(
        self,
        data_dir: Path = Path(".ragstream"),
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        device: Device = "auto",
        work_dir: Path | None = None,
        models: Sequence[str] = MODELS,
        ready_timeout_s: float = 300.0,
        stop_timeout_s: float = 15.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.device: Device = device
        self.models = tuple(models)
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._ports = (http_port, grpc_port, metrics_port)
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.work_dir = (work_dir or self.data_dir / "triton").resolve()
        self.log_path = self.work_dir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port, as `tritonclient.grpc` expects it (no scheme)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """tritonserver's process id while one was started (what a fault test signals)."""
        return None if self._process is None else self._process.pid

    def start(self) -> TritonServer:
        """Start tritonserver and return once every model is ready; raises TritonStartError."""
        if self.running:
            return self
        install = locate_triton()
        work = self.work_dir
        backends = prepare_python_backend(install, work / "backends")
        repository = render_model_repository(work / "model_repository", self.device)
        http, grpc, metrics = (port or free_port() for port in self._ports)
        self.http_port, self.grpc_port, self.metrics_port = http, grpc, metrics
        self._ports = (http, grpc, metrics)  # a restart keeps the addresses clients know
        command = [
            str(install.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-port={http}",
            f"--grpc-port={grpc}",
            f"--metrics-port={metrics}",
            "--model-control-mode=explicit",  # load exactly `models`, nothing else
            *(f"--load-model={model}" for model in self.models),
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s) - 5)}",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(install.library_dir),
                start_new_session=True,  # its own process group: stop() reaches the stubs too
                # A parent killed with SIGKILL cannot stop it: the kernel sends it SIGTERM.
                preexec_fn=die_with_parent,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _environment(self, library_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        libraries = [str(library_dir), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libraries if p)
        paths = sysconfig.get_paths()
        site_dirs = dict.fromkeys([paths["purelib"], paths["platlib"]])
        env["RAGSTREAM_SITE_PACKAGES"] = os.pathsep.join(site_dirs)
        env["RAGSTREAM_DATA_DIR"] = str(self.data_dir)
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        # torch's OpenMP threads sleep when their work runs out instead of spinning for the
        # next: beside the stages and the broker on the same cores, a spinning thread burns the
        # CPU that the thread it waits for needs. Document path, 2,000 chunks on 2 cores:
        # Triton's CPU a chunk 59.2 -> 34.4 ms, 17.0 -> 25.1 chunks/s (bench/README.md).
        # An operator's own setting wins.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(self.models)
        while pending:
            if self._process is not None and self._process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {self._process.returncode} before models"
                    f" {pending} were ready; log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"models {pending} not ready within {self.ready_timeout_s:.0f}s"
                    f" (ready_timeout_s); log {self.log_path}:\n{self.log_tail()}"
                )
            pending = [model for model in pending if not self._model_ready(model)]
            if pending:
                time.sleep(0.25)  # poll interval, bounded by the deadline above

    def _model_ready(self, model: str) -> bool:
        url = f"{self.http_url}/v2/models/{model}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines tritonserver wrote, for error messages."""
        if not self.log_path.exists():
            return "(no log written)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait for a clean exit, then kill the whole process group."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def restart(self) -> TritonServer:
        """Stop what is left (a crashed server too), then start again on the same ports, so
        clients that hold its URLs reconnect; returns once every model is ready again."""
        self.stop()
        return self.start()

    def wait(self) -> int:
        """Block until tritonserver exits; return its exit code."""
        if self._process is None:
            return 0
        return self._process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def run_triton_foreground(server: TritonServer, announce: Callable[[str], None] = print) -> int:
    """Run `server` until SIGINT/SIGTERM or until it dies; what `ragstream triton` calls."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server.start()
        announce(
            f"triton ready: models {', '.join(server.models)}; http {server.http_url},"
            f" grpc {server.grpc_url}, metrics {server.metrics_url}; log {server.log_path}"
        )
        while not stop.wait(0.5):
            if not server.running:
                announce(f"tritonserver exited; log tail:\n{server.log_tail()}")
                return 1
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__)
    default_data = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream"))
    parser.add_argument(
        "--data-dir", type=Path, default=default_data, help="models cache (RAGSTREAM_DATA_DIR)"
    )
    parser.add_argument("--work-dir", type=Path, help="repository, backend, log (DATA_DIR/triton)")
    parser.add_argument("--http-port", type=int, help="default: a free port")
    parser.add_argument("--grpc-port", type=int, help="default: a free port")
    parser.add_argument("--metrics-port", type=int, help="default: a free port")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], default="auto", help="auto: GPU if listed"
    )
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument(
        "--render-only", type=Path, metavar="DIR", help="write the model repository to DIR and exit"
    )
    args = parser.parse_args(argv)
    if args.render_only:
        print(render_model_repository(args.render_only, args.device))
        return 0
    server = TritonServer(
        args.data_dir,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        device=args.device,
        work_dir=args.work_dir,
        ready_timeout_s=args.ready_timeout,
    )
    try:
        return run_triton_foreground(server)
    except TritonStartError as error:
        print(error, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
