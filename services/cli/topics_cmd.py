"""`ragstream topics create`: the registry's topics on a Kafka cluster (compose's init job)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

topics_app = typer.Typer(help="The registry's Kafka topics on the cluster.")
out = Console()


@topics_app.command("create")
def topics_create(
    wait_s: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for the broker to answer.")
    ] = 120.0,
) -> None:
    """Create every registry topic that does not exist yet, with the registry's partitions.

    Connects to RAGSTREAM_BOOTSTRAP_SERVERS; RAGSTREAM_PARTITIONS_OVERRIDE applies. Existing
    topics are left as they are, so running it again is harmless."""
    from contracts.registry import TOPICS
    from services.runtime.kafka_admin import ensure_topics, wait_for_broker
    from services.runtime.runstate import resolve_bootstrap
    from services.runtime.settings import RuntimeSettings

    settings = RuntimeSettings()
    bootstrap = resolve_bootstrap(settings)
    wait_for_broker(bootstrap, wait_s)
    created = ensure_topics(bootstrap, partitions_override=settings.partitions_override)
    for spec in TOPICS:
        state = "created" if spec.name in created else "exists"
        out.print(f"{spec.name}: {spec.partitions} partitions ({state})")
