"""The brief's example service: publishes UserCreatedEvent, sends the welcome mail."""

import threading
from typing import override

from spakky.core.common.mutability import immutable
from spakky.core.pod.annotations.pod import Pod
from spakky.data.persistency.transaction import AbstractAsyncTransaction, AbstractTransaction
from spakky.domain.models.event import AbstractIntegrationEvent
from spakky.event.event_publisher import IAsyncEventPublisher, IEventPublisher
from spakky.event.stereotype.event_handler import EventHandler, on_event


@immutable
class UserCreatedEvent(AbstractIntegrationEvent):
    """Published when a user signs up."""

    user_id: int
    email: str


@Pod()
class UserService:
    """Creates users and tells other services about them (sync publisher)."""

    def __init__(self, publisher: IEventPublisher) -> None:
        self.publisher = publisher

    def create_user(self, user_id: int, email: str) -> UserCreatedEvent:
        event = UserCreatedEvent(user_id=user_id, email=email)
        self.publisher.publish(event)
        return event


@Pod()
class AsyncUserService:
    """The same with the async publisher."""

    def __init__(self, publisher: IAsyncEventPublisher) -> None:
        self.publisher = publisher

    async def create_user(self, user_id: int, email: str) -> UserCreatedEvent:
        event = UserCreatedEvent(user_id=user_id, email=email)
        await self.publisher.publish(event)
        return event


@Pod()
class Inbox:
    """Where the demo's handlers write what they received."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, UserCreatedEvent]] = []
        self.changed = threading.Condition(self.lock)

    def add(self, handler: str, event: UserCreatedEvent) -> None:
        with self.changed:
            self.received.append((handler, event))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.received) >= count, timeout)


@EventHandler()
class UserEventHandler:
    """Receives UserCreatedEvent in one async and one sync handler."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    @on_event(UserCreatedEvent)
    async def send_welcome_email(self, event: UserCreatedEvent) -> None:
        self.inbox.add("async send_welcome_email", event)

    @on_event(UserCreatedEvent)
    def update_statistics(self, event: UserCreatedEvent) -> None:
        self.inbox.add("sync update_statistics", event)


# spakky-event depends on spakky-data, whose @Transactional aspects are loaded with
# it and need a transaction pod; a service without a database has nothing to commit.
@Pod()
class NoDatabaseTransaction(AbstractTransaction):
    """This service keeps no database: there is nothing to begin, commit or roll back."""

    @override
    def initialize(self) -> None:
        return None

    @override
    def dispose(self) -> None:
        return None

    @override
    def commit(self) -> None:
        return None

    @override
    def rollback(self) -> None:
        return None


@Pod()
class NoDatabaseAsyncTransaction(AbstractAsyncTransaction):
    """Async counterpart of `NoDatabaseTransaction`."""

    @override
    async def initialize(self) -> None:
        return None

    @override
    async def dispose(self) -> None:
        return None

    @override
    async def commit(self) -> None:
        return None

    @override
    async def rollback(self) -> None:
        return None
