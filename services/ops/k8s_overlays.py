"""The kustomize files: the base's kustomization and the `dev` and `prod` overlays.

The overlays are rendered too (not hand-written), so `ragstream k8s render` owns every file
under `k8s/`; change an overlay here, not in the YAML. Patches are JSON 6902 operations on
targets chosen by kind and label, so a new stage or topic is covered without editing them.
"""

from __future__ import annotations

from typing import Any

from contracts.registry import TopicSpec
from services.ops.k8s import KAFKA_CLUSTER, SETTINGS_CONFIGMAP, Manifest, dump
from services.runtime.stage import STAGE_INPUTS, STAGES

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


def _patch(
    name: str, kind: str, selector: str | None, ops: list[Manifest], object_name: str = ""
) -> tuple[str, Any]:
    target: Manifest = {"kind": kind}
    if selector:
        target["labelSelector"] = selector
    if object_name:
        target["name"] = object_name
    return name, (target, ops)


def _overlay(
    namespace: str,
    tag: str,
    patches: list[tuple[str, Any]],
    header: str,
    resources: dict[str, list[Manifest]] | None = None,
) -> dict[str, str]:
    entries = [{"path": name, "target": target} for name, (target, _) in patches]
    files = {
        "kustomization.yaml": dump(
            [
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": namespace,
                    "resources": ["../../base", "namespace.yaml", *(resources or {})],
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
    for name, manifests in (resources or {}).items():
        files[name] = dump(manifests)
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
    patches += kafka_security_patches()
    return _overlay(
        "ragstream",
        "0.1.0",
        patches,
        "Production: Strimzi, KEDA and a GPU pool; Kafka over TLS with SASL/SCRAM.",
        {"kafka-auth.yaml": [keda_kafka_auth()]},
    )


#: Strimzi's TLS listener, the KafkaUser's Secret (key `password`) and the cluster CA Secret.
KAFKA_TLS_BOOTSTRAP = f"{KAFKA_CLUSTER}-kafka-bootstrap:9093"
KAFKA_USER = "ragstream"
KAFKA_CA_SECRET = f"{KAFKA_CLUSTER}-cluster-ca-cert"
KAFKA_CA_DIR = "/etc/kafka-ca"
#: What KEDA's Kafka scaler needs (keys sasl, username, password, tls, ca): made by the operator.
KEDA_KAFKA_SECRET = "ragstream-keda-kafka"
KEDA_AUTH = "ragstream-kafka"


def kafka_security_patches() -> list[tuple[str, Any]]:
    """TLS and SASL/SCRAM-SHA-512 for every stage: settings in the ConfigMap, the password
    from the KafkaUser's Secret (environment only), the CA mounted from Strimzi's Secret,
    and KEDA's lag triggers authenticated the same way."""
    env = [
        {"name": "RAGSTREAM_KAFKA_SASL_USERNAME", "value": KAFKA_USER},
        {
            "name": "RAGSTREAM_KAFKA_SASL_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": KAFKA_USER, "key": "password"}},
        },
    ]
    container = "/spec/template/spec/containers/0"
    patches = [
        _patch(
            "kafka-settings.yaml",
            "ConfigMap",
            None,
            [
                _op("replace", "/data/RAGSTREAM_BOOTSTRAP_SERVERS", KAFKA_TLS_BOOTSTRAP),
                _op("add", "/data/RAGSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                _op("add", "/data/RAGSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                _op("add", "/data/RAGSTREAM_KAFKA_SSL_CA_FILE", f"{KAFKA_CA_DIR}/ca.crt"),
            ],
            object_name=SETTINGS_CONFIGMAP,
        ),
        _patch(
            "kafka-credentials.yaml",
            "Deployment",
            STAGE_DEPLOYMENTS,
            [
                _op("add", f"{container}/env", env),
                _op(
                    "add",
                    f"{container}/volumeMounts/-",
                    {"name": "kafka-ca", "mountPath": KAFKA_CA_DIR, "readOnly": True},
                ),
                _op(
                    "add",
                    "/spec/template/spec/volumes/-",
                    {"name": "kafka-ca", "secret": {"secretName": KAFKA_CA_SECRET}},
                ),
            ],
        ),
    ]
    for stage in STAGES:  # one patch per ScaledObject: each has one trigger per input topic
        inputs: tuple[TopicSpec, ...] = STAGE_INPUTS[stage]
        patches.append(
            _patch(
                f"kafka-auth-{stage}.yaml",
                "ScaledObject",
                f"app.kubernetes.io/name={stage}",
                [
                    _op("add", f"/spec/triggers/{i}/authenticationRef", {"name": KEDA_AUTH})
                    for i in range(len(inputs))
                ],
            )
        )
    return patches


def keda_kafka_auth() -> Manifest:
    """KEDA's TriggerAuthentication for the Kafka scaler: SASL/SCRAM over TLS."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": KEDA_AUTH},
        "spec": {
            "secretTargetRef": [
                {"parameter": parameter, "name": KEDA_KAFKA_SECRET, "key": parameter}
                for parameter in ("sasl", "username", "password", "tls", "ca")
            ]
        },
    }


def overlay_files() -> dict[str, str]:
    files = {}
    for name, overlay in (("dev", dev_overlay()), ("prod", prod_overlay())):
        files.update({f"overlays/{name}/{path}": text for path, text in overlay.items()})
    return files
