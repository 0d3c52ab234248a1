"""Named errors of validate."""


class ValidateError(Exception):
    """Base of validate's errors."""


class AnswerSchemaError(ValidateError, ValueError):
    """A model's raw output is not the answer object the prompt asked for."""
