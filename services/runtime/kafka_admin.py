"""Kafka administration (confluent-kafka): broker readiness, registry topics, offsets."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from contracts.registry import TOPICS, TopicSpec
from services.runtime.exceptions import BrokerUnavailableError, TopicSetupError

#: librdkafka options for TLS/SASL (`kafka_security.librdkafka_security`); none: plaintext.
ClientSecurity = Mapping[str, str] | None


def _admin(bootstrap_servers: str, security: ClientSecurity = None) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0, **(security or {})})


def broker_answers(
    bootstrap_servers: str, timeout_s: float = 1.0, security: ClientSecurity = None
) -> bool:
    """True when a broker at `bootstrap_servers` answers a metadata request."""
    try:
        _admin(bootstrap_servers, security).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def wait_for_broker(
    bootstrap_servers: str, timeout_s: float = 30.0, security: ClientSecurity = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if broker_answers(bootstrap_servers, security=security):
            return
        time.sleep(0.2)
    raise BrokerUnavailableError(
        f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f} s; start one "
        "with `ragstream up` or `ragstream broker`, or set RAGSTREAM_BOOTSTRAP_SERVERS"
    )


def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[TopicSpec] = TOPICS,
    partitions_override: int | None = None,
    timeout_s: float = 30.0,
    security: ClientSecurity = None,
) -> list[str]:
    """Create the registry's topics that do not exist yet; returns the names created."""
    admin = _admin(bootstrap_servers, security)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(
            spec.name, num_partitions=partitions_override or spec.partitions, replication_factor=1
        )
        for spec in topics
        if spec.name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicSetupError(f"could not create topic {name}: {exc}") from exc
    return created


def partition_counts(
    bootstrap_servers: str, timeout_s: float = 10.0, security: ClientSecurity = None
) -> dict[str, int]:
    metadata = _admin(bootstrap_servers, security).list_topics(timeout=timeout_s)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}
