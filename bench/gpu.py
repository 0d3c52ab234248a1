"""GPU benchmarks: run only where a GPU is lent; otherwise a row that says why they did not.

>>> gpu_status(lister=lambda: "")["skipped"]
'no GPU lent to this session (nvidia-smi lists none)'
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from typing import Any


def _nvidia_smi_list() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def gpu_status(lister: Callable[[], str] = _nvidia_smi_list) -> dict[str, Any]:
    """{"skipped": why} without a GPU; with one, the GPUs seen (no GPU benchmark is built yet:
    bench/README.md says which commands to run there)."""
    gpus = [line for line in lister().splitlines() if line.startswith("GPU")]
    if not gpus:
        return {"skipped": "no GPU lent to this session (nvidia-smi lists none)"}
    return {
        "gpus": gpus,
        "skipped": "GPU present, but no GPU benchmark is built yet: run bench/embed.py "
        "--device gpu there (bench/README.md)",
    }
