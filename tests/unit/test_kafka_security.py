"""TLS and SASL settings for Kafka: from the environment only, the password never shown."""

from __future__ import annotations

import pytest
from faststream.security import SASLScram512
from pydantic import ValidationError

from services.runtime.kafka_security import (
    aiokafka_security,
    faststream_security,
    librdkafka_security,
)
from services.runtime.settings import RuntimeSettings

PASSWORD = "s3cr3t-from-a-k8s-secret"


def sasl_ssl(monkeypatch: pytest.MonkeyPatch) -> RuntimeSettings:
    monkeypatch.setenv("RAGSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RAGSTREAM_KAFKA_SASL_USERNAME", "ragstream-embed")
    monkeypatch.setenv("RAGSTREAM_KAFKA_SASL_PASSWORD", PASSWORD)
    return RuntimeSettings()


def test_plaintext_by_default_adds_nothing() -> None:
    settings = RuntimeSettings()
    assert faststream_security(settings) is None
    assert librdkafka_security(settings) == {} and aiokafka_security(settings) == {}


def test_sasl_ssl_from_the_environment_reaches_every_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = sasl_ssl(monkeypatch)
    security = faststream_security(settings)
    assert isinstance(security, SASLScram512)
    assert security.use_ssl and security.ssl_context is not None
    assert (security.username, security.password) == ("ragstream-embed", PASSWORD)
    assert librdkafka_security(settings) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ragstream-embed",
        "sasl.password": PASSWORD,
    }
    options = aiokafka_security(settings)
    assert options["security_protocol"] == "SASL_SSL" and options["ssl_context"] is not None


def test_the_password_never_shows_in_settings_output(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = sasl_ssl(monkeypatch)
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in shown
    assert "**********" in repr(settings)


def test_sasl_without_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSTREAM_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="needs RAGSTREAM_KAFKA_SASL_USERNAME"):
        RuntimeSettings()
