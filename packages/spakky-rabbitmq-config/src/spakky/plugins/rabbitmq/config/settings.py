"""Settings read from ``SPAKKY_RABBITMQ__*`` environment variables."""

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from spakky.core.stereotype.configuration import Configuration
from yarl import URL

from spakky.plugins.rabbitmq.config.errors import RabbitMQConfigurationError

ENV_PREFIX = "SPAKKY_RABBITMQ__"


class RabbitMQMessageAction(StrEnum):
    """What the consumer does with a message it will not hand to a handler."""

    ACK = "ack"
    """Acknowledge: the broker forgets the message."""

    NACK_REQUEUE = "nack_requeue"
    """Negative-acknowledge and put the message back on its queue, after a delay."""

    NACK_DROP = "nack_drop"
    """Negative-acknowledge without requeue: dropped, or dead-lettered by a broker policy."""

    DEAD_LETTER = "dead_letter"
    """Move the message to the plugin's dead-letter queue with the reason in its headers."""


RabbitMQAuthFailureAction = RabbitMQMessageAction
"""Name used by the brief for the auth outcome actions."""


class RabbitMQExchangeType(StrEnum):
    """AMQP exchange types the plugin can declare."""

    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"


class RabbitMQQueueType(StrEnum):
    """Queue types for the plugin's event queues."""

    CLASSIC = "classic"
    QUORUM = "quorum"


class RabbitMQTopologyMode(StrEnum):
    """Whether the plugin creates its queues and exchanges or only checks them."""

    DECLARE = "declare"
    PASSIVE = "passive"
    """Only check that everything exists, for brokers where the application may not
    create topology; missing objects fail startup."""


DEFAULT_PUBSUB_EXCHANGE = "spakky.events"
_MAX_RETRY_DELAY = 86_400.0


def env_var(field_name: str) -> str:
    """Return the environment variable that sets a settings field."""
    return f"{ENV_PREFIX}{field_name.upper()}"


@Configuration()
class RabbitMQConnectionConfig(BaseSettings):
    """How to reach RabbitMQ and how the plugin treats messages.

    Either ``URL`` alone, or ``HOST`` with ``USER`` and ``PASSWORD``; every other
    value has a default. Invalid values fail at construction with
    `RabbitMQConfigurationError`, naming the environment variable.
    """

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        hide_input_in_errors=True,
    )

    url: SecretStr | None = None
    """``amqp://`` or ``amqps://`` URL; replaces host, port, user, password, vhost, SSL."""

    use_ssl: bool = False
    host: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to 5672, or 5671 with SSL."""

    user: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    vhost: str = "/"

    service_name: str | None = Field(default=None, min_length=1, max_length=120)
    """Pub/sub mode: every service gets its own queue ``<service>.<event>`` per event."""

    exchange_name: str | None = Field(default=None, min_length=1, max_length=255)
    """When set, events are published to this exchange with the event name as routing key.
    In pub/sub mode it defaults to ``spakky.events``."""

    exchange_type: RabbitMQExchangeType | None = None
    """Defaults to ``direct`` (compatible mode) or ``topic`` (pub/sub mode)."""

    exchange_durable: bool = True
    queue_type: RabbitMQQueueType = RabbitMQQueueType.CLASSIC
    delivery_limit: int = Field(default=20, ge=1, le=100_000)
    """Quorum queues: deliveries before the broker dead-letters a message to ``<queue>.dlq``."""

    topology_mode: RabbitMQTopologyMode = RabbitMQTopologyMode.DECLARE

    auth_challenge_action: RabbitMQMessageAction = RabbitMQMessageAction.ACK
    auth_deny_action: RabbitMQMessageAction = RabbitMQMessageAction.ACK
    auth_error_action: RabbitMQMessageAction = RabbitMQMessageAction.NACK_REQUEUE
    malformed_payload_action: RabbitMQMessageAction = RabbitMQMessageAction.DEAD_LETTER
    handler_error_action: RabbitMQMessageAction = RabbitMQMessageAction.DEAD_LETTER

    prefetch_count: int = Field(default=32, ge=1, le=65535)
    """Unacknowledged messages the broker sends to each event queue's consumer."""

    concurrency: int = Field(default=8, ge=1, le=1024)
    """Messages of one event queue handled at once; 1 keeps the queue's order."""

    requeue_delay: float = Field(default=1.0, ge=0, le=3600)
    """Seconds to wait before a ``nack_requeue`` so a failing message cannot spin."""

    mandatory: bool | None = None
    """Publish with the mandatory flag, so an unroutable event fails its flush().
    Defaults to on in compatible mode and off in pub/sub mode (no subscriber is normal)."""

    heartbeat: int = Field(default=30, ge=0, le=3600)
    connect_timeout: float = Field(default=10.0, gt=0, le=600)
    confirm_timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds flush() waits for the broker's publisher confirms."""

    reconnect_timeout: float = Field(default=10.0, gt=0, le=3600)
    """Seconds a publish waits for a lost connection to come back before it fails."""

    drain_timeout: float = Field(default=30.0, ge=0, le=3600)
    """Seconds a stopping consumer waits for handlers that are already running."""

    connection_name: str | None = None
    """Shown in the broker's management UI; defaults to the process name and pid."""

    retry_delays: Annotated[tuple[float, ...], NoDecode] = (1.0, 10.0, 60.0)
    """Comma-separated seconds before each retry of a failing handler; empty: no retry."""

    def __init__(self) -> None:
        self._load({})

    @classmethod
    def from_values(cls, **values: Any) -> Self:
        """Settings from keyword arguments, over the environment (for tools and tests)."""
        config = cls.__new__(cls)
        config._load(values)
        return config

    def _load(self, values: dict[str, Any]) -> None:
        try:
            BaseSettings.__init__(self, **values)
        except ValidationError as error:
            raise RabbitMQConfigurationError.from_validation(error, env_var) from None

    @field_validator("retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(float(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("retry_delays")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < delay <= _MAX_RETRY_DELAY for delay in value):  # also rejects nan
            raise ValueError(
                f"every retry delay must be a number of seconds above 0 and at most "
                f"{_MAX_RETRY_DELAY:g} (one day)"
            )
        return value

    @field_validator("exchange_name", "service_name")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("amq."):
            raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
        return value

    @model_validator(mode="after")
    def _where_to_connect(self) -> Self:
        if self.url is not None:
            shape = f"{env_var('url')} must look like amqp://user:password@host:5672/vhost"
            try:
                parsed = URL(self.url.get_secret_value())
                _ = parsed.explicit_port  # yarl checks the port's range lazily
            except ValueError:
                raise ValueError(shape) from None  # yarl's message could echo the URL
            if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
                raise ValueError(shape)
            return self
        missing = [
            env_var(name) for name in ("host", "user", "password") if getattr(self, name) is None
        ]
        if missing:
            raise ValueError(
                f"set {', '.join(missing)} (or {env_var('url')}) to tell the plugin where "
                "RabbitMQ is"
            )
        return self

    @property
    def pubsub(self) -> bool:
        """True when ``SERVICE_NAME`` is set: each service has its own queues."""
        return self.service_name is not None

    @property
    def effective_exchange(self) -> str | None:
        """The exchange events are published to; None means the default exchange."""
        if self.exchange_name is None and self.pubsub:
            return DEFAULT_PUBSUB_EXCHANGE
        return self.exchange_name

    @property
    def effective_exchange_type(self) -> RabbitMQExchangeType:
        """``EXCHANGE_TYPE``, or the mode's default."""
        if self.exchange_type is not None:
            return self.exchange_type
        return RabbitMQExchangeType.TOPIC if self.pubsub else RabbitMQExchangeType.DIRECT

    @property
    def effective_mandatory(self) -> bool:
        """``MANDATORY``, or the mode's default."""
        return self.mandatory if self.mandatory is not None else not self.pubsub

    @property
    def amqp_url(self) -> URL:
        """The full connection URL, credentials included; never log it."""
        if self.url is not None:
            return URL(self.url.get_secret_value())
        assert self.host is not None
        assert self.user is not None
        assert self.password is not None
        # aiormq decodes the path and then turns only "%2F" back into "/".
        vhost = self.vhost.replace("/", "%2F")
        return URL.build(
            scheme="amqps" if self.use_ssl else "amqp",
            user=self.user,
            password=self.password.get_secret_value(),
            host=self.host,
            port=self.port or (5671 if self.use_ssl else 5672),
            path="/" + vhost,
        )

    @property
    def safe_url(self) -> str:
        """The connection URL with the password masked, for logs and errors."""
        url = self.amqp_url
        user = quote(url.user or "", safe="")
        credentials = f"{user}:***@" if url.password is not None else (f"{user}@" if user else "")
        port = f":{url.explicit_port}" if url.explicit_port else ""
        # url.path is what aiormq reads: the vhost with "/" written as %2F (AMQP URI spec).
        return f"{url.scheme}://{credentials}{url.host}{port}{url.path}"

    def __repr__(self) -> str:
        return f"RabbitMQConnectionConfig(url={self.safe_url!r})"

    __str__ = __repr__
