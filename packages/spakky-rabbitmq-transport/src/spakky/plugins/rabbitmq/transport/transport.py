"""Spakky event transports that publish to RabbitMQ with publisher confirms."""

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from typing import override

import aiormq.exceptions
from spakky.core.pod.annotations.pod import Pod
from spakky.core.service.interfaces.service import IAsyncService, IService
from spakky.event.event_publisher import IAsyncEventTransport, IEventTransport

from spakky.plugins.rabbitmq.config.iothread import IOThread
from spakky.plugins.rabbitmq.config.publisher import Outcome, PublishRejectedError
from spakky.plugins.rabbitmq.config.settings import RabbitMQConnectionConfig
from spakky.plugins.rabbitmq.transport._publisher import LoopPublisher
from spakky.plugins.rabbitmq.transport.errors import (
    RabbitMQBrokerBlockedError,
    RabbitMQDeliveryRejectedError,
    RabbitMQPublishTimeoutError,
    RabbitMQTransportNotRunningError,
)
from spakky.plugins.rabbitmq.transport.interceptor import IPublishInterceptor

logger = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0
_FOREIGN_CLOSE_WAIT = 2.0


@Pod()
class AsyncRabbitMQEventTransport(IAsyncEventTransport, IAsyncService):
    """Publishes from any event loop: one connection per loop, confirms awaited in flush().

    The application's loop gets its connection at start; a caller's own loop (a web
    server's, say) gets one on its first publish. ``flush()`` reports the payloads
    that the calling task handed to ``send()``.
    """

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        interceptors: tuple[IPublishInterceptor, ...] = (),
    ) -> None:
        self._config = config
        self._interceptors = interceptors
        self._publishers: dict[asyncio.AbstractEventLoop, LoopPublisher] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Future[LoopPublisher]] = {}
        self._lock = threading.Lock()
        self._running = False
        # Keyed by task, weakly: a task's own context must not hold the task, or every
        # publishing task would become a reference cycle left to the garbage collector.
        self._pending: weakref.WeakKeyDictionary[
            asyncio.Task[object], list[tuple[str, asyncio.Future[None]]]
        ] = weakref.WeakKeyDictionary()
        self._pending_outside_tasks: list[tuple[str, asyncio.Future[None]]] = []

    @override
    def set_stop_event(self, stop_event: asyncio.Event) -> None:
        del stop_event  # the transport has no loop of its own to stop

    @override
    async def start_async(self) -> None:
        publisher = LoopPublisher(self._config, self._interceptors, role="async-publisher")
        await publisher.open()
        with self._lock:
            self._publishers[publisher.loop] = publisher
            self._running = True

    @override
    async def stop_async(self) -> None:
        with self._lock:
            self._running = False
            publishers = list(self._publishers.values())
            self._publishers.clear()
        current = asyncio.get_running_loop()
        for publisher in publishers:
            if publisher.loop is current:
                await publisher.close()
            elif publisher.loop.is_running():
                # That loop may be the very one blocked in app.stop(): wait briefly; the
                # close still runs there as soon as the loop gets control back.
                future = asyncio.run_coroutine_threadsafe(publisher.close(), publisher.loop)
                try:
                    await asyncio.wait_for(asyncio.wrap_future(future), _FOREIGN_CLOSE_WAIT)
                except TimeoutError:
                    logger.debug(
                        "publisher loop %r is busy; its connection closes later", publisher.loop
                    )
            # A caller loop that already ended took its socket with it.

    @override
    async def send(
        self,
        event_name: str,
        payload: bytes,
        headers: dict[str, str],
        partition_key: str | None = None,
    ) -> None:
        del partition_key  # RabbitMQ queues keep publish order; there are no partitions
        publisher = self._publishers.get(asyncio.get_running_loop())
        if publisher is None or not self._running:
            publisher = await self._publisher_for_this_loop()
        confirmation = publisher.publish(event_name, payload, headers)
        self._pending_list().append((event_name, confirmation))

    @override
    async def flush(self) -> None:
        pending = self._pending_list()
        if not pending:
            return
        batch = pending[:]
        pending.clear()
        await _await_confirms([future for _, future in batch], self._config.confirm_timeout)
        publisher = self._publishers.get(asyncio.get_running_loop())
        alarm = publisher.blocked_reason if publisher is not None else None
        _raise_outcome(batch, self._config.confirm_timeout, alarm)

    def _pending_list(self) -> list[tuple[str, asyncio.Future[None]]]:
        task = asyncio.current_task()
        if task is None:  # a coroutine driven by hand, not by a task
            return self._pending_outside_tasks
        pending = self._pending.get(task)
        if pending is None:
            pending = self._pending[task] = []
            task.add_done_callback(self._check_flushed)
        return pending

    def _check_flushed(self, task: asyncio.Task[object]) -> None:
        unflushed = self._pending.pop(task, None)
        if unflushed:
            logger.warning(
                "%d event(s) sent by task %r were never flushed, so nobody learns whether "
                "the broker took them: call flush() in the task that called send() (a send "
                "inside asyncio.gather() or create_task() runs in a task of its own)",
                len(unflushed),
                task.get_name(),
            )

    async def _publisher_for_this_loop(self) -> LoopPublisher:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._running:
                raise RabbitMQTransportNotRunningError()
            publisher = self._publishers.get(loop)
            if publisher is not None:
                return publisher
            for ended in [other for other in self._publishers if other.is_closed()]:
                del self._publishers[ended]  # its connection closed with that loop
            opening = self._opening.get(loop)
            if opening is None:
                opening = loop.create_future()
                self._opening[loop] = opening
                owner = True
            else:
                owner = False
        if not owner:
            return await asyncio.shield(opening)
        try:
            publisher = LoopPublisher(self._config, self._interceptors, role="async-publisher")
            await publisher.open()
        except BaseException as error:
            with self._lock:
                del self._opening[loop]
            opening.set_exception(error)
            opening.exception()  # retrieved: waiters see it through their own await
            raise
        with self._lock:
            del self._opening[loop]
            running = self._running
            if running:
                self._publishers[loop] = publisher
        if not running:
            await publisher.close()
            opening.set_exception(RabbitMQTransportNotRunningError())
            opening.exception()
            raise RabbitMQTransportNotRunningError()
        opening.set_result(publisher)
        return publisher


@Pod()
class RabbitMQEventTransport(IEventTransport, IService):
    """Publishes from any thread through one connection on a private IO thread.

    ``send()`` hands the payload to the IO loop and returns; ``flush()`` blocks
    until the broker confirmed everything the calling thread sent.
    """

    def __init__(
        self,
        config: RabbitMQConnectionConfig,
        interceptors: tuple[IPublishInterceptor, ...] = (),
    ) -> None:
        self._config = config
        self._interceptors = interceptors
        self._io: IOThread | None = None
        self._publisher: LoopPublisher | None = None
        self._local = threading.local()

    @override
    def set_stop_event(self, stop_event: threading.Event) -> None:
        del stop_event  # stop() ends the IO thread itself

    @override
    def start(self) -> None:
        async def open_publisher() -> LoopPublisher:
            publisher = LoopPublisher(self._config, self._interceptors, role="sync-publisher")
            await publisher.open()
            return publisher

        self._io, self._publisher = IOThread.start_with("spakky-rabbitmq-publisher", open_publisher)

    @override
    def stop(self) -> None:
        io, publisher = self._io, self._publisher
        self._io = self._publisher = None
        if io is None or publisher is None:
            return
        try:
            io.finish(publisher.close(), timeout=_STOP_TIMEOUT)
        except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as error:
            logger.warning("closing the RabbitMQ publisher ended with %s", type(error).__name__)

    @override
    def send(
        self,
        event_name: str,
        payload: bytes,
        headers: dict[str, str],
        partition_key: str | None = None,
    ) -> None:
        del partition_key  # RabbitMQ queues keep publish order; there are no partitions
        io, publisher = self._io, self._publisher
        if io is None or publisher is None:
            raise RabbitMQTransportNotRunningError()
        confirmation: concurrent.futures.Future[None] = concurrent.futures.Future()

        def start_publish() -> None:
            try:
                future = publisher.publish(event_name, payload, headers)
            except BaseException as error:
                confirmation.set_exception(error)
                return
            future.add_done_callback(lambda done: _copy_outcome(done, confirmation))

        try:
            io.call_soon(start_publish)
        except RuntimeError:  # the IO loop closed between the check and the call
            raise RabbitMQTransportNotRunningError() from None
        self._pending_list().append((event_name, confirmation))

    @override
    def flush(self) -> None:
        pending = self._pending_list()
        if not pending:
            return
        batch = pending[:]
        pending.clear()
        futures = [future for _, future in batch]
        _, late = concurrent.futures.wait(futures, timeout=self._config.confirm_timeout)
        for future in late:
            future.cancel()
        publisher = self._publisher
        alarm = publisher.blocked_reason if publisher is not None else None
        _raise_outcome(batch, self._config.confirm_timeout, alarm)

    def _pending_list(self) -> list[tuple[str, concurrent.futures.Future[None]]]:
        pending: list[tuple[str, concurrent.futures.Future[None]]] | None = getattr(
            self._local, "pending", None
        )
        if pending is None:
            pending = []
            self._local.pending = pending
        return pending


async def _await_confirms(futures: list[asyncio.Future[None]], timeout: float) -> None:
    """Wait until every future is settled or ``timeout`` passed; cancel the late ones.

    Awaiting the futures one after another wakes this task once per future that is
    still pending, and not at all for settled ones: fewer loop passes than
    ``asyncio.wait``, which matters when each publish is awaited on its own. For the
    same reason an `Outcome` is awaited through its ``reply``, which settles sooner.
    """
    try:
        async with asyncio.timeout(timeout):
            for future in futures:
                if future.done():
                    continue
                if isinstance(future, Outcome) and not future.reply.done():
                    await _settled(future.reply)
                if not future.done():
                    await _settled(future)
    except TimeoutError:
        pass
    for future in futures:
        if not future.done():
            future.cancel()


async def _settled(future: asyncio.Future[object] | asyncio.Future[None]) -> None:
    """Wait for ``future``; its own error or cancellation is read later, not raised here."""
    try:
        await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # our own cancellation (or the timeout's), not the future's
    except Exception:
        pass


def _raise_outcome(
    batch: list[tuple[str, asyncio.Future[None]]]
    | list[tuple[str, concurrent.futures.Future[None]]],
    timeout: float,
    alarm: str | None,
) -> None:
    """Raise what the batch's confirms say: rejections, a timeout or a lost connection."""
    rejected: list[str] = []
    failure: BaseException | None = None
    unconfirmed = 0
    for event_name, future in batch:
        if not future.done() or future.cancelled():
            unconfirmed += 1
            continue
        error = future.exception()
        if error is None:
            continue
        if isinstance(error, PublishRejectedError):
            rejected.append(f"{event_name}: {error.reason}")
        elif failure is None:
            failure = error
    if failure is not None:
        raise failure
    if unconfirmed and alarm is not None:
        raise RabbitMQBrokerBlockedError(unconfirmed, len(batch), timeout, alarm)
    if unconfirmed:
        raise RabbitMQPublishTimeoutError(
            unconfirmed, len(batch), timeout, "the connection may be down or the broker slow"
        )
    if rejected:
        raise RabbitMQDeliveryRejectedError(rejected)


def _copy_outcome(source: asyncio.Future[None], target: concurrent.futures.Future[None]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(None)
