"""The launcher: a server that cannot start says why, with tritonserver's own log; a server
never outlives a parent killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from inference.exceptions import TritonStartError
from inference.server import TritonServer

pytestmark = pytest.mark.triton


def test_unknown_model_fails_start_with_the_log_tail(tmp_path: Path) -> None:
    server = TritonServer(tmp_path, device="cpu", models=["no-such-model"], ready_timeout_s=120)

    with pytest.raises(TritonStartError, match="no-such-model") as failure:
        server.start()

    assert "tritonserver exited" in str(failure.value)
    assert str(server.log_path) in str(failure.value)
    assert not server.running


def test_running_server_reports_its_urls(triton_server: TritonServer) -> None:
    assert triton_server.running
    assert triton_server.grpc_url == f"127.0.0.1:{triton_server.grpc_port}"
    assert triton_server.http_url.startswith("http://127.0.0.1:")


def test_the_models_threads_sleep_between_batches(triton_server: TritonServer) -> None:
    """The Python backend's processes run torch with OMP_WAIT_POLICY=PASSIVE: spinning OpenMP
    threads took the CPU from the stages beside them (bench/README.md)."""
    assert triton_server.pid is not None
    stubs = [
        child
        for child in psutil.Process(triton_server.pid).children(recursive=True)
        if child.name().startswith("triton_python")
    ]
    assert stubs, "no Python-backend stub under tritonserver"
    for stub in stubs:
        assert stub.environ().get("OMP_WAIT_POLICY") == "PASSIVE"


_PARENT = """
import sys, time
from pathlib import Path
from inference.server import TritonServer
server = TritonServer(Path(sys.argv[1]), device="cpu", models=["embedder"]).start()
print(server.http_url, flush=True)
time.sleep(600)
"""


def _live(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/health/live", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_a_killed_parent_takes_its_triton_with_it(tmp_path: Path) -> None:
    """`ragstream up` killed with SIGKILL leaves no tritonserver holding ports and memory."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert parent.stdout is not None
    http_url = parent.stdout.readline().strip()
    assert http_url.startswith("http://") and _live(http_url), http_url
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _live(http_url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live(http_url), f"tritonserver at {http_url} outlived its parent"
