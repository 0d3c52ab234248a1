"""Named errors of the runtime."""


class RuntimeErrorBase(RuntimeError):
    """Base of the runtime's errors."""


class BrokerStartError(RuntimeErrorBase):
    """The embedded broker did not start or did not answer in time."""


class BrokerUnavailableError(RuntimeErrorBase):
    """No Kafka broker answered at the configured bootstrap servers."""


class TopicSetupError(RuntimeErrorBase):
    """Topics from the registry could not be created."""


class StoppedWhileStarting(RuntimeErrorBase):
    """A stage was asked to stop (SIGTERM, SIGINT) before it had started: a clean exit."""
