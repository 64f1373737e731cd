"""How the package joins an application: entry points, contribution, public names."""

from importlib.metadata import distribution, entry_points
from pathlib import Path
from typing import Any

import pytest
from spakky.auth import AuthCapability, AuthProviderContribution, protected
from spakky.auth.startup import (
    AuthCapabilityStartupValidator,
    AuthStartupCapabilityValidationError,
)
from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext
from spakky.core.application.plugin import Plugin
from spakky.event.stereotype.event_handler import EventHandler, on_event

import spakky.plugins.rabbitmq.auth as package
from conftest import make_event_type
from spakky.plugins.rabbitmq.auth import RabbitMQAuthBoundary
from spakky.plugins.rabbitmq.auth.main import contribute, initialize

SOURCE = Path(__file__).parents[1] / "src"
EVERYTHING = {
    "spakky-auth",
    "spakky-cryptography",
    "spakky-rabbitmq-auth",
    "spakky-rabbitmq-config",
    "spakky-rabbitmq-consumer",
}


def test_public_names_are_pinned() -> None:
    assert sorted(package.__all__) == [
        "AUTH_BOUNDARY",
        "AmbiguousAuthSnapshotError",
        "RABBITMQ_AUTH_PROVIDER_ID",
        "RabbitMQAuthBoundary",
        "RabbitMQAuthError",
        "SNAPSHOT_HEADERS",
        "rabbitmq_auth_provider_contribution",
        "read_snapshot",
    ]


def test_no_init_in_shared_namespace_levels() -> None:
    for level in ("spakky", "spakky/plugins", "spakky/plugins/rabbitmq"):
        assert not (SOURCE / level / "__init__.py").exists(), level
    assert (SOURCE / "spakky/plugins/rabbitmq/auth/py.typed").exists()


def test_entry_points_are_discoverable() -> None:
    plugin = [e for e in entry_points(group="spakky.plugins") if e.name == "spakky-rabbitmq-auth"]
    contribution = [
        e
        for e in entry_points(group="spakky.contributions.spakky.auth")
        if e.name == "spakky-rabbitmq-auth"
    ]

    assert [e.load() for e in plugin] == [initialize]
    assert [e.load() for e in contribution] == [contribute]
    assert {e.dist.name for e in plugin + contribution if e.dist} == {"spakky-rabbitmq-auth"}


def test_runtime_dependencies_are_ranges_without_cryptography() -> None:
    requires = distribution("spakky-rabbitmq-auth").requires or []

    assert not any("cryptography" in requirement for requirement in requires)
    assert not any("==" in requirement for requirement in requires)
    names = {requirement.split(">")[0].split("<")[0].strip() for requirement in requires}
    assert {"spakky-auth", "spakky-rabbitmq-consumer"} <= names


def load(plugins: set[str]) -> SpakkyApplication:
    include = {Plugin(name=name) for name in plugins}
    return SpakkyApplication(ApplicationContext()).load_plugins(include=include)


def test_active_with_spakky_auth() -> None:
    app = load(EVERYTHING)

    assert app.container.contains(RabbitMQAuthBoundary)
    assert app.container.contains(AuthProviderContribution)


@pytest.mark.parametrize("missing", ["spakky-auth", "spakky-rabbitmq-auth"])
def test_inactive_without_spakky_auth_or_itself(missing: str) -> None:
    app = load(EVERYTHING - {missing})

    assert not app.container.contains(RabbitMQAuthBoundary)


def test_declares_only_authentication() -> None:
    contribution = package.rabbitmq_auth_provider_contribution()

    assert contribution.capabilities == frozenset({AuthCapability.AUTHENTICATION})
    assert not contribution.supports(AuthCapability.SNAPSHOT_VERIFY)


@EventHandler()
class ProtectedWorker:
    @on_event(make_event_type("plugin-startup-event"))
    @protected
    async def handle(self, event: Any) -> None: ...


def test_worker_with_only_snapshot_auth_passes_startup_validation() -> None:
    app = load(EVERYTHING)
    app.add(ProtectedWorker)

    AuthCapabilityStartupValidator(container=app.container).validate()


def test_without_this_package_a_protected_worker_lacks_authentication() -> None:
    app = load(EVERYTHING - {"spakky-rabbitmq-auth"})
    app.add(ProtectedWorker)

    with pytest.raises(AuthStartupCapabilityValidationError) as caught:
        AuthCapabilityStartupValidator(container=app.container).validate()

    assert [d.capability for d in caught.value.diagnostics] == [AuthCapability.AUTHENTICATION]
