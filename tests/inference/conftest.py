"""Fixtures for the inference tests: one real tritonserver per session, and a client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from inference.client import TritonClient
from inference.server import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def triton_client(triton_server: TritonServer) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton_server.grpc_url)
    await client.warm_up()
    await client.wait_until_ready(timeout_s=60)
    yield client
    await client.close()
