"""Settings come from SPAKKY_RABBITMQ__* and fail with the variable's name, never a secret."""

import pytest
from spakky.core.pod.annotations.pod import Pod

import spakky.plugins.rabbitmq.config as config_package
from spakky.plugins.rabbitmq.config import (
    RabbitMQConfigurationError,
    RabbitMQConnectionConfig,
    RabbitMQMessageAction,
)

SECRET = "s3cr@t:/%#pw"


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"SPAKKY_RABBITMQ__{name.upper()}", value)


def test_brief_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, use_ssl="false", host="localhost", port="5672", user="guest")
    set_env(monkeypatch, password="guest", exchange_name="my-exchange")

    config = RabbitMQConnectionConfig()

    assert (config.host, config.port, config.user, config.exchange_name) == (
        "localhost",
        5672,
        "guest",
        "my-exchange",
    )
    assert config.use_ssl is False
    assert config.auth_challenge_action is RabbitMQMessageAction.ACK
    assert config.auth_deny_action is RabbitMQMessageAction.ACK
    assert config.auth_error_action is RabbitMQMessageAction.NACK_REQUEUE
    assert config.malformed_payload_action is RabbitMQMessageAction.DEAD_LETTER
    assert config.safe_url.startswith("amqp://guest:***@localhost:5672/")
    assert config.amqp_url.path == "/%2F"  # the default vhost "/", as aiormq reads it


def test_actions_parse_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, url="amqp://u:p@h/", auth_challenge_action="nack_drop")
    set_env(monkeypatch, auth_deny_action="nack_requeue", auth_error_action="ack")

    config = RabbitMQConnectionConfig()

    assert config.auth_challenge_action is RabbitMQMessageAction.NACK_DROP
    assert config.auth_deny_action is RabbitMQMessageAction.NACK_REQUEUE
    assert config.auth_error_action is RabbitMQMessageAction.ACK


def test_ssl_switches_scheme_and_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, use_ssl="true", host="mq", user="u", password="p")

    url = RabbitMQConnectionConfig().amqp_url

    assert (url.scheme, url.host, url.port) == ("amqps", "mq", 5671)


def test_missing_values_name_the_variables() -> None:
    with pytest.raises(RabbitMQConfigurationError) as caught:
        RabbitMQConnectionConfig()

    for name in ("HOST", "USER", "PASSWORD", "URL"):
        assert f"SPAKKY_RABBITMQ__{name}" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "not-a-port"),
        ("PORT", "70000"),
        ("USE_SSL", "perhaps"),
        ("AUTH_DENY_ACTION", "explode"),
        ("MALFORMED_PAYLOAD_ACTION", "ignore"),
        ("PREFETCH_COUNT", "0"),
        ("RETRY_DELAYS", "1,-5"),
        ("RETRY_DELAYS", "nan"),
        ("RETRY_DELAYS", "inf"),
        ("RETRY_DELAYS", "1e308"),
        ("HOST", ""),
        ("EXCHANGE_NAME", ""),
        ("EXCHANGE_NAME", "amq.direct"),
        ("SERVICE_NAME", ""),
    ],
)
def test_invalid_values_name_the_variable_not_the_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    set_env(monkeypatch, host="h", user="u", password=SECRET, **{variable: value})

    with pytest.raises(RabbitMQConfigurationError) as caught:
        RabbitMQConnectionConfig()

    assert f"SPAKKY_RABBITMQ__{variable}" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None


URL_SECRET = "hunter2-url-secret"


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{URL_SECRET}@host/",
        f"amqp://user:{URL_SECRET}@[::1",
        f"amqp://user:{URL_SECRET}@host:99999/",
        f"amqp://user:{URL_SECRET}@/vhost",
    ],
)
def test_bad_url_does_not_echo_credentials(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    set_env(monkeypatch, url=url)

    with pytest.raises(RabbitMQConfigurationError) as caught:
        RabbitMQConnectionConfig()

    assert "SPAKKY_RABBITMQ__URL" in str(caught.value)
    assert URL_SECRET not in str(caught.value)
    assert URL_SECRET not in repr(caught.value)


def test_url_alternative_replaces_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, url="amqps://alice:pw@broker.internal:5999/prod")

    config = RabbitMQConnectionConfig()

    assert config.amqp_url.host == "broker.internal"
    assert config.amqp_url.port == 5999
    assert config.safe_url == "amqps://alice:***@broker.internal:5999/prod"


def test_special_characters_survive_in_user_password_and_vhost() -> None:
    config = RabbitMQConnectionConfig.from_values(
        host="h", user="us@r:/%#", password=SECRET, vhost="v/h@:%#"
    )

    url = config.amqp_url

    assert url.user == "us@r:/%#"
    assert url.password == SECRET
    assert url.path[1:].replace("%2F", "/") == "v/h@:%#"


def test_password_never_in_repr_or_str() -> None:
    config = RabbitMQConnectionConfig.from_values(host="h", user="u", password=SECRET)

    for text in (repr(config), str(config), config.safe_url, repr(config.password)):
        assert SECRET not in text


def test_retry_delays_parse_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, url="amqp://u:p@h/", retry_delays="1, 10,60")

    assert RabbitMQConnectionConfig().retry_delays == (1.0, 10.0, 60.0)


def test_config_is_a_spakky_pod() -> None:
    assert Pod.exists(RabbitMQConnectionConfig)


def test_public_names_are_pinned() -> None:
    assert sorted(config_package.__all__) == [
        "RabbitMQAuthFailureAction",
        "RabbitMQAuthenticationError",
        "RabbitMQConfigurationError",
        "RabbitMQConnection",
        "RabbitMQConnectionConfig",
        "RabbitMQConnectionError",
        "RabbitMQError",
        "RabbitMQExchangeType",
        "RabbitMQMessageAction",
        "RabbitMQTopologyError",
    ]
