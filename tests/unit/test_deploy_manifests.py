"""The deployment files agree with the code: k8s/ with the registry, compose/ with the CLI."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from contracts.registry import TOPICS
from services.cli.k8s_cmd import k8s_render
from services.cli.main import app
from services.ops.k8s import SINGLE_WRITER, render_k8s
from services.runtime import settings as settings_module
from services.runtime.broker import consumer_group
from services.runtime.stage import STAGE_INPUTS, STAGES

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
COMPOSE = REPO / "compose" / "compose.yaml"
DATA = REPO / "tests" / "data"
CRD_SCHEMAS = {
    "ScaledObject": DATA / "crd-schemas" / "scaledobject.json",
    "KafkaTopic": DATA / "crd-schemas" / "kafkatopic.json",
    "TriggerAuthentication": DATA / "crd-schemas" / "triggerauthentication.json",
}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _kustomize(overlay: str) -> list[dict[str, Any]]:
    """The overlay built by `kubectl kustomize`; skipped where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it bundles kustomize)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _env_names() -> set[str]:
    """Every environment variable a settings class in services/runtime/settings.py reads."""
    names = set()
    for _, cls in inspect.getmembers(settings_module, inspect.isclass):
        if not issubclass(cls, BaseSettings):
            continue
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(alias if isinstance(alias, str) else f"{prefix}{field_name}".upper())
    return names


def test_render_reproduces_the_committed_manifests(tmp_path: Path) -> None:
    render_k8s(tmp_path)
    assert _files(tmp_path) == _files(K8S), "run `ragstream k8s render` and commit k8s/"


def test_render_check_lists_a_file_that_drifted(tmp_path: Path) -> None:
    cli = typer.Typer()
    cli.command()(k8s_render)
    runner = CliRunner()
    assert runner.invoke(cli, ["--out", str(tmp_path)]).exit_code == 0
    assert runner.invoke(cli, ["--out", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "base" / "stage-embed.yaml").write_text("edited by hand\n")
    result = runner.invoke(cli, ["--out", str(tmp_path), "--check"])
    assert result.exit_code == 1
    assert "stage-embed.yaml" in result.output


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_objects_validate_against_their_schemas(overlay: str) -> None:
    """Built-in kinds against Kubernetes' own API schema (kubernetes-validate, strict); the
    two CRDs against the schemas in tests/data/crd-schemas (kubernetes-validate has none)."""
    version = kubernetes_validate.latest_version()
    docs = _kustomize(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "ScaledObject", "KafkaTopic", "StatefulSet", "ConfigMap"} <= kinds
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CRD_SCHEMAS:
            schema = json.loads(CRD_SCHEMAS[doc["kind"]].read_text())
            jsonschema.Draft202012Validator(schema).validate(doc)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not valid Kubernetes {version}: {exc}")


def test_every_stage_scales_on_its_own_topics_and_consumer_groups() -> None:
    docs = _kustomize("prod")
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert len(scaled) == len(STAGES)
    for stage in STAGES:
        obj = scaled[f"ragstream-{stage}"]["spec"]
        assert obj["scaleTargetRef"]["kind"] == "Deployment"
        assert obj["scaleTargetRef"]["name"] in deployments
        triggers = {
            (t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in obj["triggers"]
        }
        assert triggers == {(s.name, consumer_group(stage, s)) for s in STAGE_INPUTS[stage]}
        assert all(t["type"] == "kafka" for t in obj["triggers"])
        assert obj["maxReplicaCount"] <= min(s.partitions for s in STAGE_INPUTS[stage])
        if stage in SINGLE_WRITER:
            assert obj["maxReplicaCount"] == 1


def test_every_registry_topic_is_a_kafka_topic_with_its_partitions() -> None:
    docs = _kustomize("prod")
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert {name: spec["partitions"] for name, spec in topics.items()} == {
        spec.name: spec.partitions for spec in TOPICS
    }


def test_triton_asks_for_a_gpu_and_scales_on_queue_time() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _kustomize("prod")}
    pod = docs[("Deployment", "triton")]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    hpa = docs[("HorizontalPodAutoscaler", "triton")]["spec"]
    assert "queue" in hpa["metrics"][0]["pods"]["metric"]["name"]


def test_prod_talks_to_kafka_over_tls_with_sasl_and_secrets_only_from_secrets() -> None:
    docs = _kustomize("prod")
    [settings] = [
        d for d in docs if d["kind"] == "ConfigMap" and "settings" in d["metadata"]["name"]
    ]
    assert settings["data"]["RAGSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert settings["data"]["RAGSTREAM_BOOTSTRAP_SERVERS"].endswith(":9093")
    assert not any("PASSWORD" in key for key in settings["data"])
    settings_name = settings["metadata"]["name"]
    stages = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != "triton"]
    assert len(stages) == len(STAGES)
    for deployment in stages:
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        password = env["RAGSTREAM_KAFKA_SASL_PASSWORD"]
        assert "value" not in password and password["valueFrom"]["secretKeyRef"]["key"]
        ca = settings["data"]["RAGSTREAM_KAFKA_SSL_CA_FILE"]
        mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
        assert any(ca.startswith(m) for m in mounts), deployment["metadata"]["name"]
    for scaled in (d for d in docs if d["kind"] == "ScaledObject"):
        assert all(t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"])
    [dev] = [d for d in _kustomize("dev") if d["metadata"]["name"] == settings_name]
    assert "RAGSTREAM_KAFKA_SECURITY_PROTOCOL" not in dev["data"]  # dev: the plaintext default


def test_k8s_settings_are_real_settings() -> None:
    configmap = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())
    unknown = {k for k in configmap["data"] if k.startswith("RAGSTREAM_")} - _env_names()
    assert not unknown


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_compose_file_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(compose)


def _resolve(cli: Any, args: list[str]) -> None:
    """Parse `ragstream ARGS` as the CLI would; fails on an unknown command or option.

    Duck-typed: typer 0.29 vendors its own click, whose groups are not `click.Group`."""
    command = cli
    while hasattr(command, "commands"):
        name, args = args[0], args[1:]
        found = command.get_command(command.make_context("ragstream", [name]), name)
        assert found is not None, f"`ragstream` has no command {name!r}"
        command = found
    command.make_context(command.name or "", list(args), resilient_parsing=False).close()


def test_compose_services_run_real_ragstream_commands(compose: dict[str, Any]) -> None:
    cli = typer.main.get_command(app)
    ours = {n: s for n, s in compose["services"].items() if s["image"].startswith("ragstream:")}
    assert set(STAGES) <= set(ours)
    for name, service in ours.items():
        _resolve(cli, list(service["command"]))
        if name in STAGES:
            assert service["command"] == ["serve", name]


def test_compose_environment_is_real_settings(compose: dict[str, Any]) -> None:
    known = _env_names()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        unknown = {k for k in env if k.startswith("RAGSTREAM_")} - known
        assert not unknown, f"service {name}: {unknown} are not settings"


def test_prometheus_scrapes_every_stage() -> None:
    config = yaml.safe_load((REPO / "compose" / "prometheus.yml").read_text())
    names = {
        n
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for n in sd["names"]
    }
    assert names == set(STAGES)


SECURE_COMPOSE = REPO / "compose" / "compose.secure.yaml"


def _merged(base: Any, over: Any) -> Any:
    """`docker compose -f base -f over`'s merge, as far as these files use it: mappings
    merge key by key, sequences (volumes) are appended, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merged(base[k], v) if k in base else v for k, v in {**base, **over}.items()}
    if isinstance(base, list) and isinstance(over, list):
        return [*base, *over]
    return over


def test_secure_compose_talks_to_kafka_over_tls_with_sasl_and_secrets_only_from_env(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SECURE_COMPOSE.read_text()
    secure = yaml.safe_load(text)
    schema = json.loads((DATA / "compose-spec.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(secure)
    merged = _merged(compose, secure)
    kafka = merged["services"]["kafka"]["environment"]
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert {name for name, protocol in protocols.items() if protocol != "SASL_SSL"} == {
        "CONTROLLER"
    }
    advertised = {a.split("://")[0] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert advertised and all(protocols[name] == "SASL_SSL" for name in advertised)
    assert kafka["KAFKA_INTER_BROKER_LISTENER_NAME"] == "SASL_SSL"
    # No password in the file: each is interpolated from the environment (and required), or
    # printed from it at probe time (the healthcheck's "%s").
    assert 'password="${' in text and not re.search(r'password="(?!\$\{|%s")', text)
    assert not re.search(r"PASSWORD: (?!\$\{\w+:\?)", text)

    clients = [
        name
        for name, service in compose["services"].items()
        if service["image"].startswith("ragstream:") and "triton" not in name
    ]
    assert set(STAGES) | {"topics"} <= set(clients)
    known = _env_names()
    for name in clients:
        service = merged["services"][name]
        env = service["environment"]
        assert set(env) - set(compose["services"][name]["environment"]) <= known
        assert env["RAGSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["RAGSTREAM_KAFKA_SASL_PASSWORD"].startswith("${RAGSTREAM_KAFKA_SASL_PASSWORD:?")
        ca_file = env["RAGSTREAM_KAFKA_SSL_CA_FILE"]
        assert any(v.split(":")[1] == ca_file for v in service["volumes"]), name
        # The settings a stage reads from that environment are valid (with the password
        # compose interpolates) and keep the password out of their repr.
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setenv("RAGSTREAM_KAFKA_SASL_PASSWORD", "from-the-secret-store")
        settings = settings_module.RuntimeSettings()
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert "from-the-secret-store" not in repr(settings)
