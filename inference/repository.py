"""Prepares the Triton backend stub and model repository from the nvidia-pytriton wheel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference.exceptions import TritonNotInstalledError

MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
Device = Literal["auto", "cpu", "gpu"]
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel keeps the server binary, its shared libraries and the Python backend."""

    binary: Path
    library_dir: Path
    python_backend: Path
    stub: Path


def locate_triton() -> TritonInstall:
    """Find tritonserver inside the installed `nvidia-pytriton` wheel, without importing it."""
    spec = importlib.util.find_spec("pytriton")
    folders = list(spec.submodule_search_locations or []) if spec else []
    hint = "install it with `pip install nvidia-pytriton 'numpy<2'`"
    if not folders:
        raise TritonNotInstalledError(f"package pytriton (nvidia-pytriton) not found: {hint}")
    root = Path(folders[0]) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        library_dir=root.parent.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / _STUB,
    )
    for path in (install.binary, install.library_dir, install.python_backend, install.stub):
        if not path.exists():
            raise TritonNotInstalledError(
                f"{path} is missing from nvidia-pytriton (Python {version}): {hint}"
            )
    return install


def prepare_python_backend(install: TritonInstall, backends_dir: Path) -> Path:
    """Assemble a writable backend folder: the Python backend plus the stub for this Python.

    The wheel ships stubs per Python version beside the backend; tritonserver looks for the
    stub inside the backend folder, so it is copied there, outside site-packages.
    """
    target = backends_dir / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [install.python_backend / name for name in _BACKEND_FILES] + [install.stub]
    for source in sources:
        destination = target / source.name
        stat = source.stat()
        current = destination.stat() if destination.exists() else None
        if current is None or (current.st_size, current.st_mtime) != (stat.st_size, stat.st_mtime):
            shutil.copy2(source, destination)
    return backends_dir


def gpu_present() -> bool:
    """True when `nvidia-smi -L` lists a GPU (cheap: no torch import in the launcher)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def render_model_repository(target: Path, device: Device = "auto") -> Path:
    """Copy the model repository to `target`, with instance kind KIND_GPU for device "gpu".

    The committed configs say KIND_CPU, which works everywhere; with "auto" the GPU kind is
    chosen when `nvidia-smi` lists a GPU. The same function renders the repository for a
    production Triton container (`python -m inference.server --render-only DIR --device gpu`).
    """
    use_gpu = gpu_present() if device == "auto" else device == "gpu"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(MODEL_REPOSITORY, target, ignore=shutil.ignore_patterns("__pycache__"))
    if use_gpu:
        for config in target.glob("*/config.pbtxt"):
            text = config.read_text()
            config.write_text(text.replace("kind: KIND_CPU", "kind: KIND_GPU"))
    return target
