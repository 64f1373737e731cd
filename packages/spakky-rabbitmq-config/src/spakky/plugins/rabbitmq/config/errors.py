"""Errors of the RabbitMQ plugin; every plugin error derives from `RabbitMQError`."""

from collections.abc import Callable

import aiormq.exceptions
from pydantic import ValidationError


class RabbitMQError(Exception):
    """Base class of every error the RabbitMQ plugin raises."""


class RabbitMQConfigurationError(RabbitMQError, ValueError):
    """A ``SPAKKY_RABBITMQ__*`` setting is missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid RabbitMQ settings: " + "; ".join(problems))

    @classmethod
    def from_validation(
        cls, error: ValidationError, env_var: Callable[[str], str]
    ) -> "RabbitMQConfigurationError":
        """Describe each pydantic problem by its environment variable, never by its value."""
        problems: list[str] = []
        for detail in error.errors(include_input=False, include_url=False):
            fields = [str(part) for part in detail["loc"] if isinstance(part, str)]
            message = detail["msg"].removeprefix("Value error, ")
            if fields:
                problems.append(f"{env_var(fields[0])}: {message}")
            else:
                problems.append(message)
        return cls(problems)


class RabbitMQConnectionError(RabbitMQError, ConnectionError):
    """The broker could not be reached or closed the connection."""


class RabbitMQAuthenticationError(RabbitMQConnectionError):
    """The broker refused the user name, password or virtual host."""


class RabbitMQTopologyError(RabbitMQError):
    """A queue or exchange could not be declared as the plugin needs it."""


def describe_error(error: BaseException) -> str:
    """Name an AMQP or socket error by its reply text, never by URLs or frames."""
    args: list[object] = list(error.args)
    if isinstance(error, aiormq.exceptions.AMQPError) and args:
        frame = args[-1] if len(args) > 1 else None
        text = getattr(frame, "reply_text", None) or args[0]
        return f"{type(error).__name__}: {text}"
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    return type(error).__name__
