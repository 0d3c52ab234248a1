"""TLS and SASL for every Kafka client of a stage, from settings (the environment) only.

One place turns `RAGSTREAM_KAFKA_*` into each client library's options: FastStream's security
object for a stage's broker (aiokafka underneath), and librdkafka's configuration for the
admin calls (topic creation, readiness, lag). The password stays a `SecretStr` until a client
is built, so a logged or printed settings object shows `**********`.

>>> make_broker(settings, "embed")  # doctest: +SKIP  (uses faststream_security(settings))
>>> AdminClient({"bootstrap.servers": b, **librdkafka_security(settings)})  # doctest: +SKIP
"""

from __future__ import annotations

import ssl

from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from services.runtime.settings import RuntimeSettings

_SASL = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}


def _tls_context(settings: RuntimeSettings) -> ssl.SSLContext:
    ca = settings.kafka_ssl_ca_file
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def faststream_security(settings: RuntimeSettings) -> BaseSecurity | None:
    """FastStream's security for a stage's KafkaBroker; None for plaintext."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol in ("SSL", "SASL_SSL")
    context = _tls_context(settings) if tls else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    sasl = _SASL[settings.kafka_sasl_mechanism]
    return sasl(
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=tls,
    )


def librdkafka_security(settings: RuntimeSettings) -> dict[str, str]:
    """confluent-kafka (librdkafka) options for the same security; empty for plaintext."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    config = {"security.protocol": protocol.lower()}
    if protocol in ("SSL", "SASL_SSL") and settings.kafka_ssl_ca_file:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
    if protocol.startswith("SASL"):
        config |= {
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": settings.kafka_sasl_password.get_secret_value(),
        }
    return config


def aiokafka_security(settings: RuntimeSettings) -> dict[str, object]:
    """aiokafka client options for the same security (direct readers of a topic)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, object] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _tls_context(settings)
    if protocol.startswith("SASL"):
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password.get_secret_value(),
        }
    return options
