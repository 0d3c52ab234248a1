"""The Kubernetes base, generated from the topic registry and the stage table, never by hand.

Topics (Strimzi `KafkaTopic`), consumer groups and KEDA `ScaledObject`s come from
`contracts.registry.TOPICS`, `services.runtime.stage.STAGE_INPUTS` and
`services.runtime.broker.consumer_group`, so the manifests cannot drift from the contracts.
`render_k8s` writes them (and the overlays, see `services.ops.k8s_overlays`) as YAML with
sorted keys: `ragstream k8s render` reproduces the committed `k8s/` byte for byte.

>>> files = rendered_k8s()
>>> sorted(files)[:2]
['base/configmap.yaml', 'base/kafka-topics.yaml']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts.registry import TOPICS
from services.runtime.broker import consumer_group
from services.runtime.stage import NEEDS_TRITON, STAGE_INPUTS, STAGES

Manifest = dict[str, Any]

IMAGE = "ragstream:0.1.0"
# NVIDIA's container plus the Python backend's packages (compose/triton.Dockerfile).
TRITON_IMAGE = "ragstream-triton:0.1.0"
QDRANT_IMAGE = "qdrant/qdrant:v1.12.4"
METRICS_PORT = 9000
KAFKA_CLUSTER = "ragstream"
SETTINGS_CONFIGMAP = "ragstream-settings"

#: Settings every stage pod reads (no secrets: those belong in a Secret the overlay adds).
SETTINGS: dict[str, str] = {
    "RAGSTREAM_BOOTSTRAP_SERVERS": f"{KAFKA_CLUSTER}-kafka-bootstrap:9092",
    "RAGSTREAM_DATA_DIR": "/data",
    "RAGSTREAM_LOG_LEVEL": "INFO",
    "RAGSTREAM_METRICS_HOST": "0.0.0.0",
    "RAGSTREAM_METRICS_PORT": str(METRICS_PORT),
    # A Qdrant server: route then scales like every other stage (local mode allows one owner).
    "RAGSTREAM_QDRANT_URL": "http://qdrant:6333",
    "RAGSTREAM_TRITON_URL": "triton:8001",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
    "HF_HUB_OFFLINE": "1",
}

#: Requests and limits per stage; embed and generate are light here: Triton does the work.
RESOURCES: dict[str, Manifest] = {
    "ingest": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    "chunk": {"requests": {"cpu": "500m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
    "embed": {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
    "route": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    "generate": {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
    "validate": {"requests": {"cpu": "250m", "memory": "384Mi"}, "limits": {"memory": "768Mi"}},
    "audit": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
}

#: Consumer lag per replica that makes KEDA add one (embed batches, so it tolerates more).
LAG_THRESHOLD: dict[str, int] = {"embed": 256, "route": 256}
DEFAULT_LAG_THRESHOLD = 100

#: The audit store is DuckDB: one process may write it, so audit never scales out.
SINGLE_WRITER = {"audit"}


def deployment_name(stage: str) -> str:
    return f"ragstream-{stage}"


def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "ragstream"}


def _meta(name: str, component: str, **extra: Any) -> Manifest:
    return {"name": name, "labels": _labels(component), **extra}


def _probe(path: str, period_s: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period_s,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def stage_deployment(stage: str) -> Manifest:
    """One stage: the one image running `ragstream serve STAGE`, probed on its metrics port."""
    name = deployment_name(stage)
    single = stage in SINGLE_WRITER
    volume: Manifest = (
        {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}}
        if single
        else {"name": "data", "emptyDir": {}}
    )
    container: Manifest = {
        "name": stage,
        "image": IMAGE,
        "command": ["ragstream"],
        "args": ["serve", stage],
        "envFrom": [{"configMapRef": {"name": SETTINGS_CONFIGMAP}}],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": RESOURCES[stage],
        "startupProbe": _probe("/healthz", 5, 60),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 10, 3),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True},
    }
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, stage),
        "spec": {
            "replicas": 1,
            # Recreate: a second audit writer must never overlap the first on the volume.
            "strategy": {"type": "Recreate" if single else "RollingUpdate"},
            "selector": {"matchLabels": _labels(stage)},
            "template": {
                "metadata": {"labels": _labels(stage), "annotations": annotations},
                "spec": {
                    # SIGTERM: the stage finishes or abandons its batch uncommitted, leaves its
                    # group and exits well within this bound.
                    "terminationGracePeriodSeconds": 45,
                    "containers": [container],
                    "volumes": [volume],
                },
            },
        },
    }


def stage_scaled_object(stage: str) -> Manifest:
    """KEDA scales a stage on the lag of its consumer group on each input topic.

    One ScaledObject per Deployment (KEDA rejects two on one target), one `kafka` trigger
    per input topic: KEDA takes the largest replica count any trigger asks for. The ceiling
    is the smallest partition count among the inputs: a consumer beyond a topic's partitions
    would own none of them."""
    inputs = STAGE_INPUTS[stage]
    ceiling = 1 if stage in SINGLE_WRITER else min(spec.partitions for spec in inputs)
    threshold = LAG_THRESHOLD.get(stage, DEFAULT_LAG_THRESHOLD)
    triggers = [
        {
            "type": "kafka",
            "name": spec.short_name,
            "metadata": {
                "bootstrapServersFromEnv": "RAGSTREAM_BOOTSTRAP_SERVERS",
                "consumerGroup": consumer_group(stage, spec),
                "topic": spec.name,
                "lagThreshold": str(threshold),
                "offsetResetPolicy": "earliest",
            },
        }
        for spec in inputs
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _meta(deployment_name(stage), stage),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(stage),
            },
            "minReplicaCount": 1,
            "maxReplicaCount": ceiling,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": triggers,
        },
    }


def audit_volume_claim() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(f"{deployment_name('audit')}-data", "audit"),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }


def kafka_topics() -> list[Manifest]:
    """A Strimzi KafkaTopic per registry topic, with the registry's partition count."""
    return [
        {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaTopic",
            "metadata": {
                "name": spec.name.replace("_", "-"),
                "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **_labels("kafka-topics")},
            },
            "spec": {
                "topicName": spec.name,
                "partitions": spec.partitions,
                "replicas": 3,
                "config": {"min.insync.replicas": 2},
            },
        }
        for spec in TOPICS
    ]


def settings_configmap() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(SETTINGS_CONFIGMAP, "settings"),
        "data": dict(SETTINGS),
    }


def dump(manifests: list[Any], header: str = "") -> str:
    """Documents as stable YAML: sorted keys, block style, one header comment."""
    body = "---\n".join(
        yaml.safe_dump(m, sort_keys=True, default_flow_style=False, width=100) for m in manifests
    )
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return f"# Generated by `ragstream k8s render`; do not edit.\n{comment}{body}"


def stage_files() -> dict[str, str]:
    files = {}
    for stage in STAGES:
        manifests = [stage_deployment(stage), stage_scaled_object(stage)]
        header = f"Stage {stage}: consumes {', '.join(s.name for s in STAGE_INPUTS[stage])}."
        if stage in NEEDS_TRITON:
            header += "\nCalls Triton (RAGSTREAM_TRITON_URL)."
        if stage in SINGLE_WRITER:
            manifests.append(audit_volume_claim())
            header += (
                "\nmaxReplicaCount 1: the audit store is DuckDB, which allows one writing"
                "\nprocess per file; a second replica would fail to open it. Recreate strategy"
                "\nfor the same reason. Analysts read it through `ragstream audit`."
            )
        files[f"base/stage-{stage}.yaml"] = dump(manifests, header)
    return files


def rendered_k8s() -> dict[str, str]:
    """Every file under `k8s/`, relative path → text."""
    from services.ops.k8s_infra import infra_files
    from services.ops.k8s_overlays import kustomization, overlay_files

    files = {
        "base/configmap.yaml": dump([settings_configmap()], "Settings of every stage; no secrets."),
        "base/kafka-topics.yaml": dump(kafka_topics(), "One KafkaTopic per registry topic."),
        **stage_files(),
        **infra_files(),
    }
    files["base/kustomization.yaml"] = dump([kustomization(sorted(files))])
    files.update(overlay_files())
    return dict(sorted(files.items()))


def render_k8s(out_dir: Path) -> list[Path]:
    """Write every manifest under `out_dir`; returns the paths written."""
    written = []
    for relative, text in rendered_k8s().items():
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_k8s(out_dir: Path) -> list[str]:
    """Files under `out_dir` that differ from (or are missing against) a fresh render."""
    stale = []
    for relative, text in rendered_k8s().items():
        path = out_dir / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    return stale
