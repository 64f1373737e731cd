"""Entry points of ``spakky-rabbitmq-auth``.

``initialize`` (group ``spakky.plugins``) makes the package a loaded plugin and
registers nothing. ``contribute`` (group ``spakky.contributions.spakky.auth``)
registers the boundary; Spakky calls it only when spakky-auth is loaded too.
"""

from spakky.auth.capability import AuthCapability
from spakky.auth.contribution import AuthProviderContribution
from spakky.core.application.application import SpakkyApplication
from spakky.core.pod.annotations.pod import Pod

from spakky.plugins.rabbitmq.auth.boundary import RabbitMQAuthBoundary
from spakky.plugins.rabbitmq.config.main import add_config

RABBITMQ_AUTH_PROVIDER_ID = "provider:spakky-rabbitmq-auth"
"""Provider id under which this package declares its auth capability."""


@Pod(name="spakky_rabbitmq_auth_provider_contribution")
def rabbitmq_auth_provider_contribution() -> AuthProviderContribution:
    """Declare AUTHENTICATION: the boundary authenticates each message from its snapshot.

    Verifying the snapshot stays with the verifier provider (SNAPSHOT_VERIFY), so
    this package adds no second provider of that capability.
    """
    return AuthProviderContribution(
        provider_id=RABBITMQ_AUTH_PROVIDER_ID,
        capabilities=frozenset({AuthCapability.AUTHENTICATION}),
    )


def initialize(app: SpakkyApplication) -> None:
    """Mark the package as loaded; the work is done by `contribute`."""
    del app  # Spakky loads a contribution only when its package's own plugin is loaded


def contribute(app: SpakkyApplication) -> None:
    """Register `RabbitMQAuthBoundary` and the AUTHENTICATION capability with spakky-auth."""
    add_config(app)
    app.add(RabbitMQAuthBoundary)
    app.add(rabbitmq_auth_provider_contribution)
