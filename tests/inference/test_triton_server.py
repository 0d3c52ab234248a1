"""The launcher: a server that cannot start says why, with tritonserver's own log."""

from __future__ import annotations

from pathlib import Path

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
