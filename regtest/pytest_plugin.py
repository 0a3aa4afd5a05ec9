"""pytest fixtures for the embedded regtest node.

Register with `pytest_plugins = ["regtest.pytest_plugin"]` (tests/conftest.py).

- `regtest_clock`: a `ManualClock` (unix seconds, advanced by hand) the node
  mines with, so block times are deterministic.
- `regtest_node`: a fresh `Node` in tmp_path with 101 blocks mined to its own
  wallet (50 BTC spendable).  The chain is built once per session and its
  datadir copied for each test, so the fixture costs a file copy.
- `regtest_rpc`: that node served by `RpcServer` on 127.0.0.1, ephemeral port,
  cookie auth; yields the started server (`.url`, `.port`, `.cookie_path`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from regtest.node import Node, RpcServer

# 2023-11-14: recent enough that the node is out of "initial block download"
GENESIS_CLOCK = 1_700_000_000


class ManualClock:
    """A clock for tests: `clock()` returns `now`; `advance(s)` moves it."""

    def __init__(self, now: int = GENESIS_CLOCK) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def _regtest_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datadir = tmp_path_factory.mktemp("regtest-template")
    node = Node(datadir, clock=ManualClock())
    try:
        node.mine(101)
    finally:
        node.close()
    return datadir


@pytest.fixture
def regtest_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def regtest_node(
    _regtest_template: Path, tmp_path: Path, regtest_clock: ManualClock
) -> Iterator[Node]:
    datadir = tmp_path / "node"
    shutil.copytree(_regtest_template, datadir)
    node = Node(datadir, clock=regtest_clock)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def regtest_rpc(regtest_node: Node) -> Iterator[RpcServer]:
    server = RpcServer(regtest_node, host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
