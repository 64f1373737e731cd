"""Every package has the same shape, and the shared namespace stays PEP 420."""

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(path for path in (ROOT / "packages").iterdir() if path.is_dir())
CODE_PACKAGES = [path for path in PACKAGES if (path / "src").exists()]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda path: path.name)
def test_package_has_the_common_shape(package: Path) -> None:
    assert (package / "pyproject.toml").is_file()
    assert (package / "README.md").is_file()

    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    for requirement in project.get("dependencies", []):
        assert "==" not in requirement, f"{package.name} pins {requirement}"


@pytest.mark.parametrize("package", CODE_PACKAGES, ids=lambda path: path.name)
def test_shared_namespace_levels_have_no_init(package: Path) -> None:
    part = package.name.removeprefix("spakky-rabbitmq-")
    source = package / "src"

    for level in ("spakky", "spakky/plugins", "spakky/plugins/rabbitmq"):
        assert not (source / level / "__init__.py").exists(), f"{package.name}: {level}"
    assert (source / "spakky/plugins/rabbitmq" / part / "__init__.py").is_file()
    assert (source / "spakky/plugins/rabbitmq" / part / "py.typed").is_file()
    assert (package / "tests").is_dir()


@pytest.mark.parametrize("package", CODE_PACKAGES, ids=lambda path: path.name)
def test_entry_point_is_declared_and_loads(package: Path) -> None:
    declared = tomllib.loads((package / "pyproject.toml").read_text())["project"]["entry-points"]
    (name,) = declared["spakky.plugins"]

    (found,) = [ep for ep in entry_points(group="spakky.plugins") if ep.name == name]

    assert callable(found.load())
