"""Where a running `ragstream up` is: its broker address and process ids, under the data dir."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from services.runtime.settings import DEFAULT_BOOTSTRAP, RuntimeSettings


def state_path(data_dir: Path) -> Path:
    return data_dir / "run" / "up.json"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    tmp.replace(path)


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The state of a `ragstream up` that is still running, else None."""
    path = state_path(data_dir)
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state if pid_alive(int(state.get("supervisor_pid", 0))) else None


def clear_state(data_dir: Path) -> None:
    state_path(data_dir).unlink(missing_ok=True)


DEFAULT_TRITON_GRPC = "127.0.0.1:8001"


def resolve_triton_url(settings: RuntimeSettings) -> str:
    """RAGSTREAM_TRITON_URL, else the Triton of a running `ragstream up`, else the default."""
    if settings.triton_url:
        return settings.triton_url
    state = read_state(settings.data_dir)
    if state and state.get("triton_grpc_url"):
        return str(state["triton_grpc_url"])
    return DEFAULT_TRITON_GRPC


def resolve_bootstrap(settings: RuntimeSettings) -> str:
    """RAGSTREAM_BOOTSTRAP_SERVERS, else the broker of a running `ragstream up`, else default."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    state = read_state(settings.data_dir)
    if state and state.get("bootstrap_servers"):
        return str(state["bootstrap_servers"])
    return DEFAULT_BOOTSTRAP
