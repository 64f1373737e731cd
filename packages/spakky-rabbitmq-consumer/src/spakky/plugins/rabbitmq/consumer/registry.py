"""Which handlers receive which integration events."""

import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from types import ModuleType
from typing import Any, override

from spakky.core.pod.annotations.order import Order
from spakky.core.pod.annotations.pod import Pod
from spakky.core.pod.interfaces.aware.container_aware import IContainerAware
from spakky.core.pod.interfaces.container import IContainer
from spakky.core.pod.interfaces.post_processor import IPostProcessor
from spakky.domain.models.event import AbstractEvent, AbstractIntegrationEvent
from spakky.event.stereotype.event_handler import EventHandler, EventRoute

from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.config.topology import (
    Topology,
    consumer_topology,
    event_name_of,
    exchange_topology,
)
from spakky.plugins.rabbitmq.consumer.errors import HandlerRegistrationError
from spakky.plugins.rabbitmq.consumer.interceptor import HandlerInfo

logger = logging.getLogger(__name__)


@Pod()
class RabbitMQHandlerRegistry:
    """Handlers by integration event type, shared by the sync and async consumers.

    An event with at least one async handler is consumed by the async consumer,
    which also runs that event's sync handlers on worker threads; an event with
    only sync handlers is consumed by the sync consumer. Either way one queue
    has one AMQP consumer and every handler sees every message once.
    """

    def __init__(self) -> None:
        self._handlers: dict[type[AbstractEvent], list[HandlerInfo]] = {}
        self._lock = threading.Lock()
        self._frozen = False

    def add(self, handler: HandlerInfo) -> None:
        """Register one handler; duplicates of the same handler id are ignored."""
        with self._lock:
            if self._frozen:
                raise HandlerRegistrationError(
                    f"cannot register {handler.handler_id} after the consumers started; "
                    "register handlers before app.start()"
                )
            handlers = self._handlers.setdefault(handler.event_type, [])
            if any(existing.handler_id == handler.handler_id for existing in handlers):
                return
            handlers.append(handler)

    def freeze(self) -> None:
        """Refuse further registrations; called when the first consumer starts."""
        with self._lock:
            self._frozen = True

    def events_for(self, *, is_async: bool) -> dict[type[AbstractEvent], list[HandlerInfo]]:
        """The events the async (or sync) consumer owns, with all their handlers."""
        with self._lock:
            return {
                event_type: list(handlers)
                for event_type, handlers in self._handlers.items()
                if any(handler.is_async for handler in handlers) == is_async
            }

    def add_callback(
        self,
        event_type: type[AbstractEvent],
        callback: Callable[[Any], None] | Callable[[Any], Awaitable[None]],
        *,
        is_async: bool,
    ) -> None:
        """Register a plain callable, as ``consumer.register(event, handler)`` does."""
        _require_integration_event(event_type)
        module = getattr(callback, "__module__", None) or "callback"
        name = getattr(callback, "__qualname__", None) or repr(callback)
        self.add(
            HandlerInfo(
                handler_id=f"{module}.{name}",
                event_type=event_type,
                is_async=is_async,
                call=callback,
            )
        )


@Order(0)
@Pod()
class RabbitMQHandlerRegistrationPostProcessor(IPostProcessor, IContainerAware):
    """Finds ``@on_event`` methods of integration events in ``@EventHandler`` pods.

    The class is scanned rather than the instance, and decorators are unwrapped,
    so a pod proxied by an aspect (``@protected``, say) keeps its routes whether
    ``@on_event`` sits outside or inside the other decorators. Each message calls
    the method on the pod the container returns, so aspects still apply.
    """

    _container: IContainer

    @override
    def set_container(self, container: IContainer) -> None:
        self._container = container

    @override
    def post_process(self, pod: object) -> object:
        annotation = EventHandler.get_or_none(pod)
        if annotation is None:
            return pod
        owner_type: type[object] = annotation.type_  # type: ignore[assignment]
        routes = list(_integration_routes(owner_type))
        if not routes:
            return pod
        registry = self._container.get(RabbitMQHandlerRegistry)
        resolver = _PodResolver(self._container, owner_type, annotation.scope)
        for name, event_type, is_async in routes:
            registry.add(
                HandlerInfo(
                    handler_id=f"{owner_type.__module__}.{owner_type.__qualname__}.{name}",
                    event_type=event_type,
                    is_async=is_async,
                    owner_type=owner_type,
                    method_name=name,
                    call=resolver.method(name),
                )
            )
            logger.debug("%s.%s receives %s", owner_type.__qualname__, name, event_type.__name__)
        return pod


class _PodResolver:
    """Looks the handler pod up in the container: once for singletons, per call otherwise."""

    def __init__(self, container: IContainer, owner_type: type[object], scope: Pod.Scope) -> None:
        self._container = container
        self._owner_type = owner_type
        self._cache = scope is Pod.Scope.SINGLETON
        self._instance: object | None = None

    def method(self, name: str) -> Callable[[AbstractEvent], Any]:
        def call(event: AbstractEvent) -> Any:
            return getattr(self._instance_now(), name)(event)

        return call

    def _instance_now(self) -> object:
        instance = self._instance
        if instance is None:
            instance = self._container.get(self._owner_type)
            if self._cache:
                self._instance = instance
        return instance


def application_topology(
    config: RabbitMQConnectionConfig, modules: Iterable[ModuleType]
) -> Topology:
    """The topology that the ``@EventHandler`` classes of ``modules`` make the plugin
    declare, with the exchange publishers use; computed without connecting."""
    event_names: list[str] = []
    for module in modules:
        for _, member in inspect.getmembers(module, inspect.isclass):
            if member.__module__ != module.__name__ or not EventHandler.exists(member):
                continue
            for _, event_type, _ in _integration_routes(member):
                name = event_name_of(event_type)
                if name not in event_names:
                    event_names.append(name)
    topology = exchange_topology(config)
    for name in event_names:
        topology += consumer_topology(config, name)
    return topology


def _integration_routes(
    owner_type: type[object],
) -> list[tuple[str, type[AbstractIntegrationEvent], bool]]:
    routes: list[tuple[str, type[AbstractIntegrationEvent], bool]] = []
    for name, member in inspect.getmembers(owner_type, callable):
        if name.startswith("__"):
            continue
        route, is_async = _find_route(member)
        if route is None:
            continue
        if not issubclass(route.event_type, AbstractIntegrationEvent):
            continue  # domain events stay with Spakky's in-process mediator
        routes.append((name, route.event_type, is_async))
    return routes


def _find_route(function: object) -> tuple[EventRoute[AbstractEvent] | None, bool]:
    """The ``@on_event`` route anywhere in a decorator chain, and whether it is async."""
    route: EventRoute[AbstractEvent] | None = None
    is_async = inspect.iscoroutinefunction(function)
    seen: set[int] = set()
    current: object | None = function
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if route is None:
            route = EventRoute[AbstractEvent].get_or_none(current)
        is_async = is_async or inspect.iscoroutinefunction(current)
        current = getattr(current, "__wrapped__", None)
    return route, is_async


def _require_integration_event(event_type: type[AbstractEvent]) -> None:
    if not issubclass(event_type, AbstractIntegrationEvent):
        raise HandlerRegistrationError(
            f"{event_type!r} is not an AbstractIntegrationEvent; domain events are "
            "delivered in process by Spakky's event mediator, not through RabbitMQ"
        )
