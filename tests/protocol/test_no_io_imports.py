"""protocol/ is sans-I/O: no module imports trio, grpc, sqlalchemy, time, random,
asyncio or socket (DESIGN "Layers"; issue 5 "Done when")."""

from __future__ import annotations

import ast
from pathlib import Path

FORBIDDEN = {"trio", "grpc", "sqlalchemy", "time", "random", "asyncio", "socket", "datetime",
             "os", "threading"}
PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")
    return roots


def test_protocol_has_no_io_imports() -> None:
    files = sorted(PROTOCOL.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        bad = _imported_roots(ast.parse(path.read_text(), str(path))) & (FORBIDDEN | {"__import__"})
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_catches_a_forbidden_import() -> None:
    tree = ast.parse("import time\nfrom trio import sleep\nimport grpc.aio\n")
    assert _imported_roots(tree) >= {"time", "trio", "grpc"}
