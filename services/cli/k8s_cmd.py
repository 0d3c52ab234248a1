"""`ragstream k8s render`: the Kubernetes manifests, generated from the topic registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def k8s_render(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder to write base/ and overlays/ into.")
    ] = Path("k8s"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 listing the files that differ."),
    ] = False,
) -> None:
    """Generate topics, consumer groups, Deployments and ScaledObjects from the registry.

    Writes the kustomize base (k8s/base) and the dev and prod overlays; every file is
    generated, so edit services/ops/ rather than the YAML. `--check` is for CI."""
    from services.ops.k8s import render_k8s, stale_k8s

    if check:
        stale = stale_k8s(out_dir)
        for relative in stale:
            # Plain echo: one path per line, never wrapped or shortened, for scripts and CI.
            typer.echo(f"differs from `ragstream k8s render`: {out_dir / relative}", err=True)
        if stale:
            err.print(
                f"{len(stale)} file(s) out of date; run `ragstream k8s render --out {out_dir}`"
            )
            raise typer.Exit(1)
        out.print(f"{out_dir}: up to date with the registry")
        return
    written = render_k8s(out_dir)
    out.print(f"wrote {len(written)} files under {out_dir}")
