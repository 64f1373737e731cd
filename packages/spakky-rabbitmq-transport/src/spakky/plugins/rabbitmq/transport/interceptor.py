"""Extension point for packages that observe or enrich outgoing messages (tracing)."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class OutboundMessage:
    """One event on its way to the broker; interceptors may add headers."""

    event_name: str
    exchange: str
    routing_key: str
    message_id: str
    body: bytes
    headers: dict[str, str]


PublishCompletion = Callable[[BaseException | None], None]
"""Called once when the broker confirmed (None) or refused (the error) the message."""


class IPublishInterceptor(ABC):
    """Sees every outgoing message before it is written, and learns its outcome.

    Register an implementation as a pod; both transports collect all of them.
    An interceptor must not raise: telemetry never changes delivery.
    """

    @abstractmethod
    def before_publish(self, message: OutboundMessage) -> PublishCompletion | None:
        """Inspect or enrich ``message``; return a callback for the outcome, or None."""
        ...
