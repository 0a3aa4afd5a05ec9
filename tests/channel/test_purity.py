"""channel/ (outside channel/chain) is pure: no I/O frameworks, no clock, no randomness.

DESIGN.md: time, heights and randomness come in as arguments. The check walks the
AST of every module, so an import inside a function is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"trio", "grpc", "sqlalchemy", "time", "random"}
CHANNEL = Path(__file__).resolve().parents[2] / "channel"
MODULES = sorted(p for p in CHANNEL.rglob("*.py") if (CHANNEL / "chain") not in p.parents)


def forbidden_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [n for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def test_modules_found() -> None:
    assert len(MODULES) >= 10


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(CHANNEL)) for p in MODULES])
def test_channel_module_is_pure(path: Path) -> None:
    assert forbidden_imports(path.read_text()) == []


def test_checker_catches_imports() -> None:
    src = "import time\nfrom trio import sleep\ndef f():\n    import random.x\n"
    assert forbidden_imports(src) == ["time", "trio", "random.x"]
    assert forbidden_imports("import timeit\nfrom grpcio import x\n") == []
