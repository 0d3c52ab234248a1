"""The audit dashboard (`ragstream audit dashboard`) in a real browser: after questions went
through the pipeline, headless Chromium shows the recent requests and a request's lineage."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.audit.dashboard import request_href
from services.audit.store import audit_db_path
from services.cli.replay_cmd import wait_for_lineage
from tests.integration.conftest import StageProcesses, tenant_name
from tests.integration.test_audit import QUERY_PATH, audited  # noqa: F401 - the fixture
from tests.integration.test_query_path import EXAMPLES, ask, ingest

pytestmark = pytest.mark.integration
QUESTIONS = [
    "How many days of paid vacation does a full-time employee receive?",
    "How many weeks of paid parental leave do parents receive?",
]
#: Set to a path (e.g. docs/dashboard.png) to keep the screenshot the test takes.
SCREENSHOT_ENV = "RAGSTREAM_DASHBOARD_SCREENSHOT"


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


def headless(
    chromium: str, profile: Path, url: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run (no network beyond the dashboard, no first-run noise)."""
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *flags, url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def dashboard(audited: StageProcesses) -> Iterator[str]:  # noqa: F811 - the fixture imported above
    """`ragstream audit dashboard --port P` on the pipeline's data dir; its URL."""
    port = _free_port()
    log = open(audited.data_dir / "dashboard.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "audit", "dashboard", "--port", str(port)],
        env={**os.environ, "RAGSTREAM_DATA_DIR": str(audited.data_dir)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "api/latency", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (audited.data_dir / "dashboard.log").read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


async def test_the_dashboard_shows_recent_requests_and_a_requests_lineage_in_chromium(
    dashboard: str,
    audited: StageProcesses,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip(
            "no Chromium on PATH (Debian's `chromium` package; `make install` installs it with "
            "`apt-get install -y chromium`): the dashboard cannot be loaded in a browser"
        )
    tenant = tenant_name("dashboard")
    doc = tmp_path / "leave.md"
    doc.write_text((EXAMPLES / "corpus" / "handbook" / "leave.md").read_text())
    await ingest(audited, tenant, doc)
    answers = [await ask(audited, tenant, q, tier="extractive") for q in QUESTIONS]
    path = audit_db_path(audited.data_dir)
    for answer in answers:
        deadline = time.monotonic() + 60
        lineage = await asyncio.to_thread(wait_for_lineage, path, answer.request_id, deadline)
        assert lineage is not None, f"{answer.request_id}'s lineage not in the audit store"
    shown = answers[0]
    page = dashboard.rstrip("/") + request_href(shown.request_id)

    dom = headless(chromium, tmp_path / "profile", page, "--dump-dom").stdout
    recent = dom[dom.index('id="recent"') : dom.index('id="lineage"')]
    assert all(f'data-request-id="{a.request_id}"' in recent for a in answers)
    assert tenant in recent and "answered" in recent
    lineage = dom[dom.index('id="lineage"') : dom.index('id="costs"')]
    assert f'data-request-id="{shown.request_id}"' in lineage
    stages = re.findall(r'data-stage="([\w.]+)"', lineage)
    assert [s for s in stages if s in QUERY_PATH][:5] == QUERY_PATH, stages
    assert shown.answer is not None and shown.answer in html.unescape(lineage)
    costs = dom[dom.index('id="costs"') : dom.index('id="latency"')]
    assert tenant in costs  # two generations by the extractive tier, at no cost
    assert 'data-stage="end_to_end.query"' in dom[dom.index('id="latency"') :]

    screenshot = tmp_path / "dashboard.png"
    headless(chromium, tmp_path / "profile", page, f"--screenshot={screenshot}",
             "--window-size=1280,900", "--hide-scrollbars")  # fmt: skip
    image = screenshot.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 20_000
    if target := os.environ.get(SCREENSHOT_ENV):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
