"""Named errors of the inference package: starting Triton and calling its models."""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error raised by `inference`."""


class TritonNotInstalledError(InferenceError):
    """The `tritonserver` binary or its Python backend is missing from the environment."""


class TritonStartError(InferenceError):
    """tritonserver exited, or its models were not ready before the deadline."""


class ClientNotWarmedUpError(InferenceError, RuntimeError):
    """A client method was called before `warm_up()`."""


class InferenceUnavailableError(InferenceError):
    """Triton could not be reached or timed out, after the retries."""


class InferenceRequestError(InferenceError):
    """Triton rejected a request (bad input, unknown model): retrying will not help."""


class CircuitOpenError(InferenceUnavailableError):
    """The circuit breaker is open after repeated failures: fall back instead of calling Triton."""
