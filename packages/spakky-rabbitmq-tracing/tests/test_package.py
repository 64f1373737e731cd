"""The package's shape and entry points, without a broker."""

from importlib.metadata import distribution, entry_points
from pathlib import Path

import spakky.plugins.rabbitmq.tracing as tracing
from spakky.plugins.rabbitmq.tracing.main import contribute, initialize

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def test_public_names_are_pinned() -> None:
    assert sorted(tracing.__all__) == ["TracingConsumeInterceptor", "TracingPublishInterceptor"]


def test_plugin_and_contribution_entry_points_are_discovered() -> None:
    plugins = {ep.name: ep for ep in entry_points(group="spakky.plugins")}
    contributions = {
        ep.name: ep for ep in entry_points(group="spakky.contributions.spakky.tracing")
    }

    assert plugins["spakky-rabbitmq-tracing"].load() is initialize
    assert contributions["spakky-rabbitmq-tracing"].load() is contribute


def test_runtime_dependencies_leave_the_sdk_out() -> None:
    requires = distribution("spakky-rabbitmq-tracing").requires or []
    names = sorted(req.split(">")[0].split("<")[0].split("=")[0].strip() for req in requires)

    assert names == [
        "opentelemetry-api",
        "spakky-rabbitmq-consumer",
        "spakky-rabbitmq-transport",
        "spakky-tracing",
    ]


def test_namespace_levels_have_no_init_module() -> None:
    src = PACKAGE_ROOT / "src"

    for level in ("spakky", "spakky/plugins", "spakky/plugins/rabbitmq"):
        assert not (src / level / "__init__.py").exists(), level
    assert (src / "spakky/plugins/rabbitmq/tracing/__init__.py").exists()
    assert (src / "spakky/plugins/rabbitmq/tracing/py.typed").exists()


def test_transport_and_consumer_do_not_import_tracing() -> None:
    packages = PACKAGE_ROOT.parent
    for part in ("spakky-rabbitmq-transport", "spakky-rabbitmq-consumer"):
        for source in (packages / part / "src").rglob("*.py"):
            assert "rabbitmq.tracing" not in source.read_text(), source
