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


@Pod()
class AsyncRabbitMQEventConsumer(IAsyncService, IApplicationContextAware):
    """Consumes, on the application's loop, every event that has an async handler.

    That event's sync handlers run on worker threads of the same consumer, so
    each handler gets each message once. The class does not implement Spakky's
    ``IAsyncEventConsumer``: that slot belongs to the in-process mediator of
    domain events.
    """

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

    @override
    def set_stop_event(self, stop_event: asyncio.Event) -> None:
        del stop_event  # stop_async() drains and closes by itself

    def register[EventT: AbstractEvent](
        self, event: type[EventT], handler: Callable[[EventT], Awaitable[None]]
    ) -> None:
        """Deliver every ``event`` from RabbitMQ to ``handler``; call before start."""
        self._registry.add_callback(event, handler, is_async=True)

    @property
    def queues(self) -> list[str]:
        """The queues consumed while running."""
        return self._engine.queues if self._engine is not None else []

    @override
    async def start_async(self) -> None:
        self._registry.freeze()
        engine = ConsumerEngine(
            self._config,
            self._registry.events_for(is_async=True),
            self._interceptors,
            self._application_context,
            role="async-consumer",
        )
        await engine.start()
        self._engine = engine

    @override
    async def stop_async(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.stop()


@Pod()
class RabbitMQEventConsumer(IService, IApplicationContextAware):
    """Consumes events whose handlers are all sync, on a private IO thread.

    Handlers run on worker threads, so a handler that blocks for minutes does
    not stop the connection's heartbeats.
    """

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
        self._io: IOThread | None = None

    @override
    def set_application_context(self, application_context: IApplicationContext) -> None:
        self._application_context = application_context

    @override
    def set_stop_event(self, stop_event: threading.Event) -> None:
        del stop_event  # stop() drains and closes by itself

    def register[EventT: AbstractEvent](
        self, event: type[EventT], handler: Callable[[EventT], Any]
    ) -> None:
        """Deliver every ``event`` from RabbitMQ to ``handler``; call before start."""
        self._registry.add_callback(event, handler, is_async=False)

    @property
    def queues(self) -> list[str]:
        """The queues consumed while running."""
        return self._engine.queues if self._engine is not None else []

    @override
    def start(self) -> None:
        self._registry.freeze()
        events = self._registry.events_for(is_async=False)
        if not events:
            return
        io = IOThread("spakky-rabbitmq-consumer")

        async def start_engine() -> ConsumerEngine:
            engine = ConsumerEngine(
                self._config,
                events,
                self._interceptors,
                self._application_context,
                role="sync-consumer",
            )
            await engine.start()
            return engine

        try:
            self._engine = io.run(start_engine())
        except BaseException:
            io.stop()
            raise
        self._io = io

    @override
    def stop(self) -> None:
        io, engine = self._io, self._engine
        self._io = self._engine = None
        if io is None or engine is None:
            return
        try:
            io.run(engine.stop(), timeout=self._config.drain_timeout + _STOP_MARGIN)
        finally:
            io.stop()
