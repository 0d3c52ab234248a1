"""The kustomize files: the base's kustomization and the `dev` and `prod` overlays.

The overlays are rendered too (not hand-written), so `ragstream k8s render` owns every file
under `k8s/`; change an overlay here, not in the YAML. Patches are JSON 6902 operations on
targets chosen by kind and label, so a new stage or topic is covered without editing them.
"""

from __future__ import annotations

from typing import Any

from services.ops.k8s import Manifest, dump

#: Stages that scale out (audit stays at one replica in every overlay: DuckDB, one writer).
SCALABLE = "app.kubernetes.io/part-of=ragstream,app.kubernetes.io/name!=audit"
STAGE_DEPLOYMENTS = "app.kubernetes.io/name in (ingest,chunk,embed,route,generate,validate,audit)"


def kustomization(resources: list[str]) -> Manifest:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/managed-by": "kustomize"}}],
        "resources": [path.removeprefix("base/") for path in resources],
    }


def _op(op: str, path: str, value: Any) -> Manifest:
    return {"op": op, "path": path, "value": value}


def _patch(name: str, kind: str, selector: str | None, ops: list[Manifest]) -> tuple[str, Any]:
    target: Manifest = {"kind": kind}
    if selector:
        target["labelSelector"] = selector
    return name, (target, ops)


def _overlay(
    namespace: str, tag: str, patches: list[tuple[str, Any]], header: str
) -> dict[str, str]:
    entries = [{"path": name, "target": target} for name, (target, _) in patches]
    files = {
        "kustomization.yaml": dump(
            [
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": ["../../base", "namespace.yaml"],
                    "images": [{"name": "ragstream", "newTag": tag}],
                    "patches": entries,
                }
            ],
            header,
        ),
        "namespace.yaml": dump(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
        ),
    }
    for name, (_, ops) in patches:
        files[name] = dump([ops])
    return files


def dev_overlay() -> dict[str, str]:
    """One broker, small pods, at most two consumers per stage."""
    patches = [
        _patch(
            "kafka-topics.yaml",
            "KafkaTopic",
            None,
            [
                _op("replace", "/spec/replicas", 1),
                _op("replace", "/spec/config/min.insync.replicas", 1),
            ],
        ),
        _patch(
            "scaling.yaml",
            "ScaledObject",
            SCALABLE,
            [_op("replace", "/spec/maxReplicaCount", 2)],
        ),
        _patch(
            "resources.yaml",
            "Deployment",
            STAGE_DEPLOYMENTS,
            [_op("replace", "/spec/template/spec/containers/0/resources/requests/cpu", "100m")],
        ),
    ]
    return _overlay("ragstream-dev", "0.1.0", patches, "Development: one broker, small pods.")


def prod_overlay() -> dict[str, str]:
    """Two consumers per scalable stage at least (no cold start), roomier pods, Triton x2."""
    patches = [
        _patch(
            "scaling.yaml",
            "ScaledObject",
            SCALABLE,
            [_op("replace", "/spec/minReplicaCount", 2)],
        ),
        _patch(
            "resources.yaml",
            "Deployment",
            STAGE_DEPLOYMENTS,
            [
                _op("replace", "/spec/template/spec/containers/0/resources/requests/cpu", "1"),
                _op("replace", "/spec/template/spec/containers/0/resources/limits/memory", "2Gi"),
            ],
        ),
        _patch(
            "triton.yaml",
            "HorizontalPodAutoscaler",
            "app.kubernetes.io/name=triton",
            [_op("replace", "/spec/minReplicas", 2)],
        ),
    ]
    return _overlay("ragstream", "0.1.0", patches, "Production: Strimzi, KEDA and a GPU pool.")


def overlay_files() -> dict[str, str]:
    files = {}
    for name, overlay in (("dev", dev_overlay()), ("prod", prod_overlay())):
        files.update({f"overlays/{name}/{path}": text for path, text in overlay.items()})
    return files
