"""Extension point for packages that act around each handler call (auth, tracing)."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from spakky.domain.models.event import AbstractEvent

from spakky.plugins.rabbitmq.config.settings import RabbitMQMessageAction


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One handler an event is delivered to."""

    handler_id: str
    """Stable name, ``module.Class.method`` for ``@EventHandler`` methods."""

    event_type: type[AbstractEvent]
    is_async: bool
    call: Callable[[AbstractEvent], object] = field(repr=False, compare=False)
    """Calls the handler; returns an awaitable for async handlers."""

    owner_type: type[object] | None = None
    """The ``@EventHandler`` class, or None for a callback registered by hand."""

    method_name: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """What the consumer knows about one delivery, before and after decoding."""

    event_name: str
    queue: str
    message_id: str | None
    headers: dict[str, str]
    """String-valued AMQP headers; other values are converted or left out."""

    body_size: int
    redelivered: bool
    attempt: int
    """1 on the first delivery; counted up by the plugin's retries."""


class MessageRejected(Exception):
    """Raised by an interceptor to skip the handler and settle the message with ``action``."""

    def __init__(self, action: RabbitMQMessageAction, reason: str) -> None:
        self.action = action
        self.reason = reason
        super().__init__(f"{reason} -> {action.value}")


class IConsumeInterceptor(ABC):
    """Wraps every handler call in a context manager, in the handler's own context.

    ``intercept`` runs in the task (async handlers) or worker thread (sync
    handlers) that then calls the handler, right after the application context
    was cleared for this message. Raise `MessageRejected` on entry to skip the
    handler; exceptions of the handler pass through ``__exit__``.
    Register implementations as pods; both consumers collect all of them.
    """

    order: int = 0
    """Where this interceptor sits: a lower order wraps a higher one; equal ones keep the
    container's order. Tracing is outermost (-100), so its span also covers rejections."""

    @abstractmethod
    def intercept(
        self, message: InboundMessage, handler: HandlerInfo, event: AbstractEvent
    ) -> AbstractContextManager[None]:
        """Return the context manager that surrounds this handler call."""
        ...
