"""Supervises stage processes: starts them, restarts a crashed one, stops all on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from services.runtime.children import die_with_parent

MAX_RESTARTS_PER_MINUTE = 5


class SupervisorGaveUp(RuntimeError):
    """A process kept crashing; everything was stopped."""


@dataclass
class ManagedProcess:
    """One supervised process: its command, log file and restart history."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def stage_command(stage: str) -> list[str]:
    return [sys.executable, "-m", "services.cli.main", "serve", stage]


class Supervisor:
    """Runs processes until stopped; restarts a crashed one, gives up on one that keeps crashing."""

    def __init__(self, console: Console | None = None) -> None:
        self.processes: list[ManagedProcess] = []
        self.console = console or Console(stderr=True)
        self._stopping = False

    def add(
        self, name: str, command: list[str], log_path: Path, env: dict[str, str]
    ) -> ManagedProcess:
        managed = ManagedProcess(name, command, log_path, env)
        managed.start()
        self.processes.append(managed)
        return managed

    def pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for managed in self.processes:
            if managed.pid is not None:
                out.setdefault(managed.name, []).append(managed.pid)
        return out

    def check(self) -> bool:
        """Restart crashed processes; returns True when a pid changed."""
        changed = False
        now = time.monotonic()
        for managed in self.processes:
            code = managed.exited()
            if code is None or self._stopping:
                continue
            managed.restarts = [t for t in managed.restarts if now - t < 60] + [now]
            if len(managed.restarts) > MAX_RESTARTS_PER_MINUTE:
                raise SupervisorGaveUp(
                    f"{managed.name} exited {len(managed.restarts)} times within a minute "
                    f"(last code {code}); its log {managed.log_path} ends with:\n"
                    f"{managed.log_tail()}"
                )
            self.console.print(
                f"[yellow]{managed.name} (pid {managed.pid}) exited with code {code}; "
                f"restarting[/] (log: {managed.log_path})"
            )
            managed.start()
            changed = True
        return changed

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM all (stages finish or abandon their batch uncommitted), then SIGKILL."""
        self._stopping = True
        for managed in self.processes:
            if managed.process and managed.process.poll() is None:
                managed.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for managed in self.processes:
            if managed.process is None:
                continue
            try:
                managed.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(
                    f"[red]{managed.name} (pid {managed.pid}) did not stop; killing[/]"
                )
                managed.process.kill()
                managed.process.wait()


def child_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
