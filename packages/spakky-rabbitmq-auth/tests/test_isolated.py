"""The package installed alone (with its declared dependencies) still joins an application."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
PACKAGES = ("spakky-rabbitmq-auth", "spakky-rabbitmq-consumer", "spakky-rabbitmq-config")
CHECK = """
from importlib.metadata import distributions, entry_points
from spakky.core.application.application import SpakkyApplication
from spakky.core.application.application_context import ApplicationContext
from spakky.plugins.rabbitmq.auth import RabbitMQAuthBoundary
from spakky.plugins.rabbitmq.auth.main import contribute, initialize

names = {d.metadata["Name"] for d in distributions()}
assert "spakky-cryptography" not in names, names
assert not names & {"spakky-rabbitmq", "spakky-rabbitmq-transport"}, names
plugin = [e for e in entry_points(group="spakky.plugins") if e.name == "spakky-rabbitmq-auth"]
added = [
    e for e in entry_points(group="spakky.contributions.spakky.auth")
    if e.name == "spakky-rabbitmq-auth"
]
assert [e.load() for e in plugin] == [initialize]
assert [e.load() for e in added] == [contribute]
app = SpakkyApplication(ApplicationContext()).load_plugins()
assert app.container.contains(RabbitMQAuthBoundary)
print("ok")
"""


@pytest.mark.isolated
def test_entry_points_in_an_environment_holding_only_this_package(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    uv = ["bash", str(ROOT / "tools" / "uv.sh")]
    sources = [str(ROOT / "packages" / name) for name in PACKAGES]

    subprocess.run([*uv, "venv", "-q", str(venv)], check=True, timeout=120)
    subprocess.run(
        [*uv, "pip", "install", "-q", "--python", str(python), *sources],
        check=True,
        timeout=300,
    )
    result = subprocess.run(
        [str(python), "-c", CHECK], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
