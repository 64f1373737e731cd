"""Signed auth snapshot check for Spakky handlers fed by RabbitMQ.

Installed next to ``spakky-auth`` and a snapshot verifier (``spakky-cryptography``,
for one), it needs no code: every message to an ``@EventHandler`` method is checked
before the method runs, and ``@protected`` methods see the sender's AuthContext.

Example:
    @EventHandler()
    class Billing:
        @on_event(InvoiceRequested)
        @require_role("billing")
        async def bill(self, event: InvoiceRequested) -> None:
            ...  # runs only for messages signed for a subject with that role
"""

from spakky.plugins.rabbitmq.auth.boundary import (
    AUTH_BOUNDARY,
    SNAPSHOT_HEADERS,
    RabbitMQAuthBoundary,
    read_snapshot,
)
from spakky.plugins.rabbitmq.auth.errors import AmbiguousAuthSnapshotError, RabbitMQAuthError
from spakky.plugins.rabbitmq.auth.main import (
    RABBITMQ_AUTH_PROVIDER_ID,
    rabbitmq_auth_provider_contribution,
)

__all__ = [
    "AUTH_BOUNDARY",
    "RABBITMQ_AUTH_PROVIDER_ID",
    "SNAPSHOT_HEADERS",
    "AmbiguousAuthSnapshotError",
    "RabbitMQAuthBoundary",
    "RabbitMQAuthError",
    "rabbitmq_auth_provider_contribution",
    "read_snapshot",
]
