# pyright: reportPrivateUsage=false
"""The README's Python example runs as written."""

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_readme_usage_example_defines_a_working_service() -> None:
    (example,) = python_blocks(ROOT / "README.md")
    namespace: dict[str, object] = {"__name__": "readme_example"}

    exec(compile(example, "README.md", "exec"), namespace)

    from spakky.event.stereotype.event_handler import EventHandler

    from spakky.plugins.rabbitmq.consumer.registry import _integration_routes

    handler = namespace["WelcomeMail"]
    assert EventHandler.exists(handler)
    handler_type: Any = handler
    routes = {name: is_async for name, _, is_async in _integration_routes(handler_type)}
    assert routes == {"send": True, "count": False}
