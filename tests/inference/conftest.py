"""Fixtures for the inference tests: one real tritonserver per session, and a client on it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from inference.client import TritonClient
from inference.server import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver on free ports; converted models are cached in the data dir across runs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", REPO_ROOT / ".ragstream"))
    server = TritonServer(
        data_dir, device="cpu", work_dir=tmp_path_factory.mktemp("triton"), ready_timeout_s=600
    )
    with server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def triton_client(triton_server: TritonServer) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton_server.grpc_url)
    await client.warm_up()
    await client.wait_until_ready(timeout_s=60)
    yield client
    await client.close()
