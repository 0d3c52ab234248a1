"""One question is one trace across every stage process, with the Triton calls as GenAI spans,
and the personal data in it reaches no trace file and no log."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import StageProcesses, eventually, tenant_name
from tests.integration.test_query_path import ingest

pytestmark = pytest.mark.integration
EMAIL = "jane.doe@corp.example"
QUESTION = f"How many days of paid vacation do I get? I am {EMAIL}"
QUERY_PATH = {"ingest", "embed", "route", "generate", "validate"}


def _spans(traces: Path) -> list[dict[str, Any]]:
    """Every span the stages exported so far (a line being written is read next time)."""
    spans = []
    for path in sorted(traces.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return spans


def _stage_of(span: dict[str, Any]) -> str:
    return str(span["service"]).removeprefix("ragstream-")


async def test_a_question_is_one_trace_through_every_stage_without_its_email(
    pipeline: StageProcesses, tmp_path: Path
) -> None:
    tenant = tenant_name("traced")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "leave.md").write_text(
        "# Leave\n\nFull-time employees receive 25 days of paid vacation each year.\n"
    )
    await ingest(pipeline, tenant, corpus)

    # `ragstream ask` as a user runs it: the question's trace starts in the CLI process.
    asked = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "services.cli.main", "ask", QUESTION, "--tenant", tenant),
        *("--tier", "small", "--timeout", "240", "--json"),
        env={
            **os.environ,
            "RAGSTREAM_BOOTSTRAP_SERVERS": pipeline.bootstrap,
            "RAGSTREAM_DATA_DIR": str(pipeline.data_dir),
        },
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(asked.communicate(), 300)
    assert asked.returncode == 0, out
    request_id = json.loads(out)["request_id"]
    [ask_span] = [
        s
        for s in _spans(pipeline.data_dir / "traces")
        if (s["name"], s["attributes"].get("ragstream.request_id")) == ("ragstream ask", request_id)
    ]
    assert ask_span["service"] == "ragstream-cli" and ask_span["parent_span_id"] is None
    trace_id = ask_span["trace_id"]

    async def whole_trace() -> list[dict[str, Any]] | None:
        spans = [s for s in _spans(pipeline.data_dir / "traces") if s["trace_id"] == trace_id]
        stages = {_stage_of(s) for s in spans}
        model_calls = [s for s in spans if s["attributes"].get("gen_ai.system") == "triton"]
        return spans if QUERY_PATH <= stages and model_calls else None

    spans = await eventually(whole_trace, timeout_s=90, what=f"trace {trace_id} in every stage")

    model_calls = {s["name"]: s for s in spans if s["attributes"].get("gen_ai.system")}
    assert {"embeddings embedder", "chat generator"} <= model_calls.keys(), sorted(model_calls)
    chat = model_calls["chat generator"]["attributes"]
    assert chat["gen_ai.operation.name"] == "chat" and chat["gen_ai.request.model"] == "generator"
    assert chat["gen_ai.request.max_tokens"] > 0
    if model_calls["chat generator"]["status"]["code"] != "ERROR":
        assert chat["gen_ai.usage.input_tokens"] > 0 and chat["gen_ai.usage.output_tokens"] > 0
    assert model_calls["embeddings embedder"]["attributes"]["gen_ai.operation.name"] == (
        "embeddings"
    )
    # Each hop's messaging spans carry the request's correlation id.
    conversations = {s["attributes"].get("messaging.message.conversation_id") for s in spans}
    assert request_id in conversations
    by_id = {s["span_id"]: s for s in spans}
    generate = next(s for s in spans if s["name"] == "chat generator")
    assert by_id[generate["parent_span_id"]]["service"] == "ragstream-generate"

    written = [*(pipeline.data_dir / "traces").glob("*.jsonl"), *pipeline.data_dir.glob("*.log")]
    leaking = [p.name for p in written if EMAIL in p.read_text(encoding="utf-8", errors="replace")]
    assert not leaking, f"{EMAIL} written to {leaking}"
