"""The sync and async consumers: background services that feed ``@EventHandler`` methods."""

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, override

from spakky.core.pod.annotations.pod import Pod
from spakky.core.pod.interfaces.application_context import IApplicationContext
from spakky.core.pod.interfaces.aware.application_context_aware import IApplicationContextAware
from spakky.core.service.interfaces.service import IAsyncService, IService
from spakky.domain.models.event import AbstractEvent

from spakky.plugins.rabbitmq.config.iothread import IOThread
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.consumer._engine import ConsumerEngine
from spakky.plugins.rabbitmq.consumer.interceptor import IConsumeInterceptor
from spakky.plugins.rabbitmq.consumer.registry import RabbitMQHandlerRegistry

_STOP_MARGIN = 15.0


class _ConsumerBase(IApplicationContextAware):
    """What both consumers share: settings, registry, interceptors, their engine."""

    _is_async: bool
    _role: str

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        registry: RabbitMQHandlerRegistry,
        interceptors: tuple[IConsumeInterceptor, ...] = (),
    ) -> None:
        self._config = config
        self._registry = registry
        self._interceptors = interceptors
        self._application_context: IApplicationContext | None = None
        self._engine: ConsumerEngine | None = None

    @override
    def set_application_context(self, application_context: IApplicationContext) -> None:
        self._application_context = application_context

    @property
    def queues(self) -> list[str]:
        """The queues consumed while running."""
        return self._engine.queues if self._engine is not None else []

    def _new_engine(self) -> ConsumerEngine | None:
        """The engine for this consumer's share of the events, or None if it has none."""
        self._registry.freeze()
        events = self._registry.events_for(is_async=self._is_async)
        if not events:
            return None
        return ConsumerEngine(
            self._config, events, self._interceptors, self._application_context, role=self._role
        )


@Pod()
class AsyncRabbitMQEventConsumer(_ConsumerBase, IAsyncService):
    """Consumes, on the application's loop, every event that has an async handler.

    That event's sync handlers run on worker threads of the same consumer, so
    each handler gets each message once. The class does not implement Spakky's
    ``IAsyncEventConsumer``: that slot belongs to the in-process mediator of
    domain events.
    """

    _is_async = True
    _role = "async-consumer"

    @override
    def set_stop_event(self, stop_event: asyncio.Event) -> None:
        del stop_event  # stop_async() drains and closes by itself

    def register[EventT: AbstractEvent](
        self, event: type[EventT], handler: Callable[[EventT], Awaitable[None]]
    ) -> None:
        """Deliver every ``event`` from RabbitMQ to ``handler``; call before start."""
        self._registry.add_callback(event, handler, is_async=True)

    @override
    async def start_async(self) -> None:
        engine = self._new_engine()
        if engine is not None:
            await engine.start()
            self._engine = engine

    @override
    async def stop_async(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()


@Pod()
class RabbitMQEventConsumer(_ConsumerBase, IService):
    """Consumes events whose handlers are all sync, on a private IO thread.

    Handlers run on worker threads, so a handler that blocks for minutes does
    not stop the connection's heartbeats.
    """

    _is_async = False
    _role = "sync-consumer"
    _io: IOThread | None = None

    @override
    def set_stop_event(self, stop_event: threading.Event) -> None:
        del stop_event  # stop() drains and closes by itself

    def register[EventT: AbstractEvent](
        self, event: type[EventT], handler: Callable[[EventT], Any]
    ) -> None:
        """Deliver every ``event`` from RabbitMQ to ``handler``; call before start."""
        self._registry.add_callback(event, handler, is_async=False)

    @override
    def start(self) -> None:
        engine = self._new_engine()
        if engine is None:
            return

        async def start_engine() -> ConsumerEngine:
            await engine.start()
            return engine

        self._io, self._engine = IOThread.start_with("spakky-rabbitmq-consumer", start_engine)

    @override
    def stop(self) -> None:
        io, engine = self._io, self._engine
        self._io = self._engine = None
        if io is not None and engine is not None:
            io.finish(engine.stop(), timeout=self._config.drain_timeout + _STOP_MARGIN)
