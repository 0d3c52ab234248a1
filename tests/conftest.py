"""Shared test set-up: nothing reaches a model hub; every test's data dir is its own."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.server import TritonServer

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
