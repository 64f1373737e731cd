"""Consuming on one event loop: subscribe, decode, dispatch, settle each message."""

import asyncio
import contextvars
import enum
import inspect
import logging
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec
from pydantic import TypeAdapter, ValidationError
from spakky.core.pod.interfaces.application_context import IApplicationContext
from spakky.domain.models.event import AbstractEvent
from spakky.event.error import InvalidMessageError

from spakky.plugins.rabbitmq.config.connection import RabbitMQConnection
from spakky.plugins.rabbitmq.config.errors import describe_error
from spakky.plugins.rabbitmq.config.publisher import ConfirmPublisher
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig, RabbitMQMessageAction
from spakky.plugins.rabbitmq.config.topology import (
    consumer_topology,
    dead_letter_queue_name,
    declare,
    event_name_of,
    queue_name,
    retry_queue_name,
)
from spakky.plugins.rabbitmq.consumer._threads import HandlerThreads
from spakky.plugins.rabbitmq.consumer.errors import HandlerEscapedError
from spakky.plugins.rabbitmq.consumer.headers import (
    HEADER_ATTEMPT,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_HANDLERS,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
    text_headers,
)
from spakky.plugins.rabbitmq.consumer.interceptor import (
    HandlerInfo,
    IConsumeInterceptor,
    InboundMessage,
    MessageRejected,
)

logger = logging.getLogger(__name__)

_ERROR_TEXT_LIMIT = 1000
_ACK_WITHOUT_DRAIN = "wait" in inspect.signature(aiormq.Channel.basic_ack).parameters
"""aiormq 7.2 added ``basic_ack(wait=False)``; older versions always drain."""
_AMQP_TIMEOUT = 10.0
_RESUBSCRIBE_FIRST = 0.5
_RESUBSCRIBE_MAX = 15.0


class _Settle(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    REQUEUE = "requeue"
    DROP = "drop"
    DEAD = "dead"


_SETTLE_OF_ACTION = {
    RabbitMQMessageAction.ACK: _Settle.DONE,
    RabbitMQMessageAction.NACK_REQUEUE: _Settle.REQUEUE,
    RabbitMQMessageAction.NACK_DROP: _Settle.DROP,
    RabbitMQMessageAction.DEAD_LETTER: _Settle.DEAD,
}


@dataclass(slots=True)
class _Outcome:
    handler: HandlerInfo | None
    """None when no handler ran (the body could not be decoded)."""
    settle: _Settle
    reason: str = ""
    error: BaseException | None = None


@dataclass(slots=True)
class _Subscription:
    event_type: type[AbstractEvent]
    event_name: str
    queue: str
    handlers: list[HandlerInfo]
    adapter: TypeAdapter[AbstractEvent]
    semaphore: asyncio.Semaphore
    channel: aiormq.abc.AbstractChannel | None = None
    consumer_tag: str | None = None
    generation: int = 0
    by_id: dict[str, HandlerInfo] = field(default_factory=dict[str, HandlerInfo])


class ConsumerEngine:
    """Consumes the queues of a set of events on the running loop.

    Each event queue gets its own channel (a channel error stays local to it),
    prefetch ``PREFETCH_COUNT`` and at most ``CONCURRENCY`` messages in handlers.
    A message is acknowledged only after all its handlers returned; see
    `_settle` for what happens otherwise.
    """

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        events: dict[type[AbstractEvent], list[HandlerInfo]],
        interceptors: tuple[IConsumeInterceptor, ...],
        application_context: IApplicationContext | None,
        *,
        role: str,
    ) -> None:
        self._config = config
        self._interceptors = tuple(sorted(interceptors, key=_order_of))
        self._application_context = application_context
        self._role = role
        self._subscriptions = [
            self._subscription(event, handlers) for event, handlers in events.items()
        ]
        self._connection: RabbitMQConnection | None = None
        self._publisher: ConfirmPublisher | None = None
        self._threads: HandlerThreads[_Outcome] | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._watchers: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def queues(self) -> list[str]:
        """The queues this engine consumes."""
        return [subscription.queue for subscription in self._subscriptions]

    async def start(self) -> None:
        """Connect, declare every queue with its dead-letter queue, and start consuming."""
        if not self._subscriptions:
            return
        self._connection = RabbitMQConnection(self._config, role=self._role)
        await self._connection.open()
        self._publisher = ConfirmPublisher(
            self._connection, ready_timeout=self._config.reconnect_timeout
        )
        sync_handlers = sum(
            not handler.is_async for sub in self._subscriptions for handler in sub.handlers
        )
        if sync_handlers:
            self._threads = HandlerThreads(
                min(64, self._config.concurrency * len(self._subscriptions)),
                f"spakky-rabbitmq-{self._role}",
            )
        try:
            for subscription in self._subscriptions:
                await self._subscribe(subscription)
        except BaseException:
            await self._close_connection()
            if self._threads is not None:
                self._threads.shutdown()
                self._threads = None
            raise
        self._connection.add_reconnect_listener(self._resubscribe)

    async def stop(self) -> None:
        """Stop new deliveries, let running handlers finish, hand the rest back to the broker.

        Handlers get ``DRAIN_TIMEOUT`` seconds; a message whose handler is still
        running then is not acknowledged, so the broker delivers it again.
        """
        self._stopping = True
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self._watchers.clear()
        for subscription in self._subscriptions:
            await self._cancel(subscription)
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=self._config.drain_timeout)
            if late:
                logger.warning(
                    "%d message(s) still in handlers after %g s (SPAKKY_RABBITMQ__DRAIN_TIMEOUT); "
                    "they stay unacknowledged and will be delivered again",
                    len(late),
                    self._config.drain_timeout,
                )
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=1.0)
        await self._close_connection()
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None

    def _subscription(
        self, event_type: type[AbstractEvent], handlers: list[HandlerInfo]
    ) -> _Subscription:
        event_name = event_name_of(event_type)
        return _Subscription(
            event_type=event_type,
            event_name=event_name,
            queue=queue_name(self._config, event_name),
            handlers=handlers,
            adapter=TypeAdapter(event_type),
            semaphore=asyncio.Semaphore(self._config.concurrency),
            by_id={handler.handler_id: handler for handler in handlers},
        )

    async def _subscribe(self, subscription: _Subscription) -> None:
        connection = self._connection
        assert connection is not None
        await declare(
            connection, self._config, consumer_topology(self._config, subscription.event_name)
        )

        channel = await connection.channel(
            confirms=False, prefetch_count=self._config.prefetch_count
        )
        channel.on_consumer_cancel_callbacks.add(
            lambda _: self._on_broker_cancel(subscription, channel)
        )
        consume_ok = await channel.basic_consume(
            subscription.queue,
            partial(self._on_message, subscription),
            timeout=_AMQP_TIMEOUT,
        )
        subscription.channel = channel
        subscription.consumer_tag = consume_ok.consumer_tag
        subscription.generation += 1
        self._own(
            asyncio.create_task(
                self._watch(subscription, channel, subscription.generation),
                name=f"spakky-rabbitmq-watch-{subscription.queue}",
            )
        )
        logger.debug(
            "consuming %s with %d handler(s)", subscription.queue, len(subscription.handlers)
        )

    async def _resubscribe(self) -> None:
        for subscription in self._subscriptions:
            await self._subscribe(subscription)

    def _on_broker_cancel(
        self, subscription: _Subscription, channel: aiormq.abc.AbstractChannel
    ) -> None:
        # The broker cancels a consumer when its queue is deleted (AMQP basic.cancel);
        # closing the channel hands the work to _watch, which subscribes again.
        logger.warning("the broker cancelled the consumer of %s", subscription.queue)
        self._own(asyncio.create_task(_close_quietly(channel)))

    def _own(self, task: asyncio.Task[Any]) -> None:
        """Keep a background task until it ends; `stop` cancels what is left."""
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(
        self, subscription: _Subscription, channel: aiormq.abc.AbstractChannel, generation: int
    ) -> None:
        """Subscribe again when this queue's channel alone fails; a lost connection is
        the connection's business (it resubscribes everything after reconnecting)."""
        try:
            await channel.closing  # pyright: ignore[reportUnknownMemberType]
        except asyncio.CancelledError:
            raise
        except Exception as error:  # why the channel closed; logged below
            reason = describe_error(error)
        else:
            reason = "closed"
        delay = _RESUBSCRIBE_FIRST
        while not self._stopping and subscription.generation == generation:
            await asyncio.sleep(delay)
            connection = self._connection
            if connection is None or not connection.is_open or self._stopping:
                return
            if subscription.generation != generation:
                return
            logger.warning(
                "channel of %s closed (%s); subscribing again", subscription.queue, reason
            )
            try:
                await self._subscribe(subscription)
            except Exception as error:  # keep trying while the connection is up
                reason = describe_error(error)
                delay = min(delay * 2, _RESUBSCRIBE_MAX)
                continue
            return

    async def _cancel(self, subscription: _Subscription) -> None:
        channel, tag = subscription.channel, subscription.consumer_tag
        if channel is None or tag is None or channel.is_closed:
            return
        try:
            await channel.basic_cancel(tag, timeout=_AMQP_TIMEOUT)
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
            logger.debug("cancelling %s ended with %s", subscription.queue, type(error).__name__)

    async def _close_connection(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def _on_message(
        self, subscription: _Subscription, message: aiormq.abc.DeliveredMessage
    ) -> None:
        delivery = message.delivery
        if (
            not isinstance(delivery, spec.Basic.Deliver)
            or delivery.consumer_tag is None
            or delivery.delivery_tag is None
        ):
            raise InvalidMessageError()
        if self._stopping:
            return  # never started: the broker gets it back when the channel closes
        async with subscription.semaphore:
            if self._stopping:
                return
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                await self._process(subscription, message)
            finally:
                self._in_flight.discard(task)

    async def _process(
        self, subscription: _Subscription, message: aiormq.abc.DeliveredMessage
    ) -> None:
        properties = message.header.properties
        headers = text_headers(properties.headers)
        inbound = InboundMessage(
            event_name=subscription.event_name,
            queue=subscription.queue,
            message_id=properties.message_id,
            headers=headers,
            body_size=len(message.body),
            redelivered=bool(getattr(message.delivery, "redelivered", False)),
            attempt=_attempt_of(headers),
        )

        try:
            event = subscription.adapter.validate_json(message.body)
        except ValidationError as error:
            await self._settle_undecodable(subscription, message, error)
            return

        handlers = self._handlers_for(subscription, headers)
        if len(handlers) == 1:
            outcomes = [await self._invoke(handlers[0], event, inbound)]
        else:
            outcomes = await asyncio.gather(
                *(self._invoke(handler, event, inbound) for handler in handlers)
            )
        await self._settle(subscription, message, outcomes)

    def _handlers_for(
        self, subscription: _Subscription, headers: dict[str, str]
    ) -> list[HandlerInfo]:
        wanted = headers.get(HEADER_HANDLERS)
        if not wanted:
            return subscription.handlers
        chosen = [
            subscription.by_id[handler_id]
            for handler_id in wanted.split(",")
            if handler_id in subscription.by_id
        ]
        if not chosen:
            logger.warning(
                "message on %s names handlers %s that are not registered; running all handlers",
                subscription.queue,
                wanted,
            )
            return subscription.handlers
        return chosen

    async def _invoke(
        self, handler: HandlerInfo, event: AbstractEvent, inbound: InboundMessage
    ) -> _Outcome:
        if handler.is_async:
            return await self._call_async(handler, event, inbound)
        assert self._threads is not None
        context = contextvars.copy_context()
        return await self._threads.run(
            lambda: context.run(self._call_sync, handler, event, inbound)
        )

    async def _call_async(
        self, handler: HandlerInfo, event: AbstractEvent, inbound: InboundMessage
    ) -> _Outcome:
        self._begin_message()
        try:
            if self._interceptors:
                await self._within_async(0, handler, event, inbound)
            else:
                await handler.call(event)  # type: ignore[misc]
        except MessageRejected as rejected:
            return _Outcome(handler, _SETTLE_OF_ACTION[rejected.action], rejected.reason)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the consumer itself is being cancelled (shutdown past the drain)
            return self._failed(handler, inbound, _escaped(error))
        except Exception as error:
            return self._failed(handler, inbound, error)
        except BaseException as error:  # SystemExit, KeyboardInterrupt from a handler
            return self._failed(handler, inbound, _escaped(error))
        return _Outcome(handler, _Settle.DONE)

    def _call_sync(
        self, handler: HandlerInfo, event: AbstractEvent, inbound: InboundMessage
    ) -> _Outcome:
        self._begin_message()
        try:
            if self._interceptors:
                self._within_sync(0, handler, event, inbound)
            else:
                handler.call(event)
        except MessageRejected as rejected:
            return _Outcome(handler, _SETTLE_OF_ACTION[rejected.action], rejected.reason)
        except Exception as error:
            return self._failed(handler, inbound, error)
        except BaseException as error:  # SystemExit, KeyboardInterrupt from a handler
            return self._failed(handler, inbound, _escaped(error))
        return _Outcome(handler, _Settle.DONE)

    def _begin_message(self) -> None:
        # Each message starts from an empty application context, as an HTTP request does.
        if self._application_context is not None:
            self._application_context.clear_context()

    # The interceptors nest as plain `with` blocks, one level each, the first outermost
    # (an ExitStack costs several times more per message). Called with at least one.

    async def _within_async(
        self, level: int, handler: HandlerInfo, event: AbstractEvent, inbound: InboundMessage
    ) -> None:
        with self._interceptors[level].intercept(inbound, handler, event):
            if level + 1 == len(self._interceptors):
                await handler.call(event)  # type: ignore[misc]
            else:
                await self._within_async(level + 1, handler, event, inbound)

    def _within_sync(
        self, level: int, handler: HandlerInfo, event: AbstractEvent, inbound: InboundMessage
    ) -> None:
        with self._interceptors[level].intercept(inbound, handler, event):
            if level + 1 == len(self._interceptors):
                handler.call(event)
            else:
                self._within_sync(level + 1, handler, event, inbound)

    def _failed(self, handler: HandlerInfo, inbound: InboundMessage, error: Exception) -> _Outcome:
        delays = self._config.retry_delays
        if inbound.attempt <= len(delays):
            logger.warning(
                "handler %s failed on message %s from %s; attempt %d of %d, next in %g s: %s",
                handler.handler_id,
                inbound.message_id,
                inbound.queue,
                inbound.attempt,
                len(delays) + 1,
                delays[inbound.attempt - 1],
                _error_text(error),
            )
            return _Outcome(handler, _Settle.RETRY, "handler_error", error)
        settle = _SETTLE_OF_ACTION[self._config.handler_error_action]
        logger.error(
            "handler %s failed on message %s from %s after %d attempt(s) (%s)",
            handler.handler_id,
            inbound.message_id,
            inbound.queue,
            inbound.attempt,
            settle.value,
            exc_info=error,
        )
        return _Outcome(handler, settle, "handler_error", error)

    async def _settle_undecodable(
        self,
        subscription: _Subscription,
        message: aiormq.abc.DeliveredMessage,
        error: ValidationError,
    ) -> None:
        details = error.errors(include_input=False, include_url=False)
        malformed = any(detail["type"] == "json_invalid" for detail in details)
        reason = "malformed_json" if malformed else "schema_mismatch"
        summary = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}"
            for detail in details[:5]
        )
        action = self._config.malformed_payload_action
        logger.warning(
            "message %s on %s cannot be read as %s (%s): %s -> %s",
            message.header.properties.message_id,
            subscription.queue,
            subscription.event_type.__name__,
            reason,
            summary,
            action.value,
        )
        outcome = _Outcome(
            handler=None,
            settle=_SETTLE_OF_ACTION[action],
            reason=reason,
            error=_Undecodable(summary),
        )
        await self._settle(subscription, message, [outcome], name_handlers=False)

    async def _settle(
        self,
        subscription: _Subscription,
        message: aiormq.abc.DeliveredMessage,
        outcomes: list[_Outcome],
        *,
        name_handlers: bool = True,
    ) -> None:
        """Acknowledge, reject, requeue or dead-letter after all handlers answered.

        Every handler done: ack. All handlers want the same other thing: that
        happens to the message itself (``nack_requeue`` after ``REQUEUE_DELAY``).
        A mix: copies go to the dead-letter queue or back to the queue, each naming
        only the handlers still owed (header ``x-spakky-handlers``), then the
        original is acknowledged, so handlers that succeeded do not run twice.
        """
        unfinished = [outcome for outcome in outcomes if outcome.settle is not _Settle.DONE]
        if not unfinished:
            await _ack(message)
            return
        kinds = {outcome.settle for outcome in unfinished}
        uniform = len(unfinished) == len(outcomes) and len(kinds) == 1
        if uniform and _Settle.DROP in kinds:
            await _nack(message, requeue=False)
            return
        if uniform and _Settle.REQUEUE in kinds:
            await self._delay()
            await _nack(message, requeue=True)
            return

        forwards: list[asyncio.Future[None]] = []
        dead = [outcome for outcome in unfinished if outcome.settle is _Settle.DEAD]
        if dead:
            forwards.append(
                self._forward(
                    message,
                    routing_key=_dead_letter_queue(subscription),
                    outcomes=dead,
                    name_handlers=name_handlers,
                    extra=_dead_letter_headers(subscription, dead),
                )
            )
        retry = [outcome for outcome in unfinished if outcome.settle is _Settle.RETRY]
        if retry:
            attempt = _attempt_of(text_headers(message.header.properties.headers))
            delay = self._config.retry_delays[attempt - 1]
            forwards.append(
                self._forward(
                    message,
                    routing_key=retry_queue_name(subscription.queue, delay),
                    outcomes=retry,
                    name_handlers=True,
                    extra={HEADER_ATTEMPT: str(attempt + 1), **_error_headers(retry)},
                )
            )
        again = [outcome for outcome in unfinished if outcome.settle is _Settle.REQUEUE]
        if again:
            await self._delay()
            forwards.append(
                self._forward(
                    message, routing_key=subscription.queue, outcomes=again, name_handlers=True
                )
            )
        try:
            async with asyncio.timeout(self._config.confirm_timeout):
                await asyncio.gather(*forwards)
        except Exception as error:
            logger.error(
                "could not move message %s from %s (%s); it goes back to the queue",
                message.header.properties.message_id,
                subscription.queue,
                type(error).__name__,
            )
            await self._delay()
            await _nack(message, requeue=True)
            return
        await _ack(message)

    def _forward(
        self,
        message: aiormq.abc.DeliveredMessage,
        *,
        routing_key: str,
        outcomes: list[_Outcome],
        name_handlers: bool,
        extra: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        assert self._publisher is not None
        original = message.header.properties
        headers: dict[str, Any] = dict(original.headers or {})
        if name_handlers:
            headers[HEADER_HANDLERS] = ",".join(
                outcome.handler.handler_id for outcome in outcomes if outcome.handler is not None
            )
        headers.update(extra or {})
        properties = spec.Basic.Properties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=headers,
            delivery_mode=2,
            correlation_id=original.correlation_id,
            message_id=original.message_id,
            timestamp=original.timestamp,
            message_type=original.message_type,
            app_id=original.app_id,
        )
        return self._publisher.publish(
            message.body,
            exchange="",
            routing_key=routing_key,
            properties=properties,
            mandatory=True,
        )

    async def _delay(self) -> None:
        if self._config.requeue_delay and not self._stopping:
            await asyncio.sleep(self._config.requeue_delay)


def _order_of(interceptor: IConsumeInterceptor) -> int:
    return interceptor.order


def _escaped(error: BaseException) -> Exception:
    escaped = HandlerEscapedError(f"{type(error).__name__}: {error}")
    escaped.__cause__ = error
    return escaped


class _Undecodable(Exception):
    """Stands for a body that is not valid JSON or does not fit the event's schema."""


def _dead_letter_queue(subscription: _Subscription) -> str:
    return dead_letter_queue_name(subscription.queue)


def _dead_letter_headers(subscription: _Subscription, dead: list[_Outcome]) -> dict[str, str]:
    return {
        HEADER_REASON: dead[0].reason,
        **_error_headers(dead),
        HEADER_ORIGINAL_QUEUE: subscription.queue,
        HEADER_DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
    }


def _error_headers(outcomes: list[_Outcome]) -> dict[str, str]:
    error = outcomes[0].error
    if error is None:
        return {HEADER_ERROR_TYPE: "", HEADER_ERROR_MESSAGE: ""}
    return {HEADER_ERROR_TYPE: type(error).__qualname__, HEADER_ERROR_MESSAGE: _error_text(error)}


def _error_text(error: BaseException) -> str:
    return str(error)[:_ERROR_TEXT_LIMIT]


async def _close_quietly(channel: aiormq.abc.AbstractChannel) -> None:
    with suppress(TimeoutError, aiormq.exceptions.AMQPError, OSError):
        await asyncio.wait_for(channel.close(), _AMQP_TIMEOUT)


def _attempt_of(headers: dict[str, str]) -> int:
    try:
        return max(1, int(headers.get(HEADER_ATTEMPT, "1")))
    except ValueError:
        return 1


async def _ack(message: aiormq.abc.DeliveredMessage) -> None:
    channel = message.channel
    if channel.is_closed:
        return  # the broker requeued it when the channel went; it will come again
    if _ACK_WITHOUT_DRAIN:
        # basic.ack has no reply (AMQP 0-9-1 1.8.3.13): waiting for the socket to
        # drain after each one only costs a writer round per message.
        await channel.basic_ack(_delivery_tag(message), wait=False)
        return
    await channel.basic_ack(_delivery_tag(message))


async def _nack(message: aiormq.abc.DeliveredMessage, *, requeue: bool) -> None:
    channel = message.channel
    if channel.is_closed:
        return
    await channel.basic_nack(_delivery_tag(message), requeue=requeue)


def _delivery_tag(message: aiormq.abc.DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.Deliver)
    assert delivery.delivery_tag is not None
    return delivery.delivery_tag
