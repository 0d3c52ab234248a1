"""The Kubernetes base's shared servers: Triton on a GPU with its HPA, and Qdrant."""

from __future__ import annotations

from typing import Any

from services.ops.k8s import IMAGE, QDRANT_IMAGE, TRITON_IMAGE, Manifest, _labels, _meta, dump

#: Queue time per request (µs) above which the HPA adds a Triton replica. The metric is
#: Triton's `nv_inference_queue_duration_us` turned into a per-request average by the
#: Prometheus adapter (docs/operations.md has the rule).
TRITON_QUEUE_METRIC = "nv_inference_queue_duration_us"
TRITON_QUEUE_TARGET_US = "50000"


def _service(name: str, ports: dict[str, int]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, name),
        "spec": {
            "selector": _labels(name),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                for port_name, port in ports.items()
            ],
        },
    }


def _http_probe(path: str, port: str, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": 10,
        "failureThreshold": failures,
    }


def triton_deployment() -> Manifest:
    """NVIDIA's Triton container on one GPU; an init container copies the model repository
    out of the ragstream image, so models and services ship in one versioned artifact."""
    ports = {"http": 8000, "grpc": 8001, "metrics": 8002}
    container: dict[str, Any] = {
        "name": "triton",
        "image": TRITON_IMAGE,
        "command": ["tritonserver"],
        "args": [
            "--model-repository=/models",
            "--allow-metrics=true",
            "--metrics-port=8002",
            "--exit-on-error=false",
        ],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()],
        "resources": {
            "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1},
            "limits": {"memory": "16Gi", "nvidia.com/gpu": 1},
        },
        "startupProbe": {**_http_probe("/v2/health/ready", "http", 60)},
        "livenessProbe": _http_probe("/v2/health/live", "http", 3),
        "readinessProbe": _http_probe("/v2/health/ready", "http", 3),
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    copy_models: Manifest = {
        "name": "model-repository",
        "image": IMAGE,
        "command": ["cp", "-r", "/app/inference/model_repository/.", "/models/"],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "8002"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("triton", "triton"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels("triton")},
            "template": {
                "metadata": {"labels": _labels("triton"), "annotations": annotations},
                "spec": {
                    "initContainers": [copy_models],
                    "containers": [container],
                    "volumes": [{"name": "models", "emptyDir": {}}],
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                },
            },
        },
    }


def triton_hpa() -> Manifest:
    """Triton scales on queue time: requests waiting for a model instance mean the GPU is
    the bottleneck, whatever the stages' lag."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("triton", "triton"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": TRITON_QUEUE_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": TRITON_QUEUE_TARGET_US,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def qdrant_statefulset() -> Manifest:
    container: Manifest = {
        "name": "qdrant",
        "image": QDRANT_IMAGE,
        "ports": [
            {"name": "http", "containerPort": 6333, "protocol": "TCP"},
            {"name": "grpc", "containerPort": 6334, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "livenessProbe": _http_probe("/livez", "http", 3),
        "readinessProbe": _http_probe("/readyz", "http", 3),
        "volumeMounts": [{"name": "storage", "mountPath": "/qdrant/storage"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta("qdrant", "qdrant"),
        "spec": {
            "serviceName": "qdrant",
            "replicas": 1,
            "selector": {"matchLabels": _labels("qdrant")},
            "template": {
                "metadata": {"labels": _labels("qdrant")},
                "spec": {"containers": [container]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "storage"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "20Gi"}},
                    },
                }
            ],
        },
    }


def infra_files() -> dict[str, str]:
    return {
        "base/triton.yaml": dump(
            [triton_deployment(), _service("triton", {"http": 8000, "grpc": 8001, "metrics": 8002}),
             triton_hpa()],
            "Triton on a GPU (embedder, generator) and its HPA on queue time.",
        ),
        "base/qdrant.yaml": dump(
            [qdrant_statefulset(), _service("qdrant", {"http": 6333, "grpc": 6334})],
            "Qdrant server: route writes and reads it (RAGSTREAM_QDRANT_URL).",
        ),
    }  # fmt: skip
