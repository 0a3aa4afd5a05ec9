"""`chanhub-regtest` end to end: a real node process on loopback, driven by the CLI."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from regtest import demo
from regtest.cli import main
from regtest.harness import free_port, running_node, stop_node


@pytest.fixture
def datadir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "node"
    stop_node(tmp_path / "node")  # whatever a failing test left running


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def start(datadir: Path) -> Result:
    return run("node", "start", "--datadir", str(datadir), "--port", str(free_port()))


def test_start_mine_fund_status_stop(datadir: Path) -> None:
    port = free_port()
    started = run("node", "start", "--datadir", str(datadir), "--port", str(port))
    assert started.exit_code == 0, started.output
    assert f"127.0.0.1:{port}" in started.output
    cookie = datadir / "regtest" / ".cookie"
    assert stat.S_IMODE(os.stat(cookie).st_mode) == 0o600

    again = run("node", "start", "--datadir", str(datadir), "--port", str(port))
    assert again.exit_code == 1
    assert "already running" in again.output

    mined = run("mine", "101", "--datadir", str(datadir))
    assert mined.exit_code == 0, mined.output
    assert "height 101" in mined.output

    address = demo.DemoKey("cli test").address
    funded = run("fund", address, "0.25", "--confirm", "--datadir", str(datadir))
    assert funded.exit_code == 0, funded.output
    assert "sent 0.25000000 BTC" in funded.output and "confirmed" in funded.output

    status = run("node", "status", "--datadir", str(datadir))
    assert status.exit_code == 0, status.output
    assert "height:    102" in status.output
    assert "mempool:   0 transactions" in status.output

    stopped = run("node", "stop", "--datadir", str(datadir))
    assert stopped.exit_code == 0, stopped.output
    assert running_node(datadir) is None
    assert not cookie.exists()  # a clean shutdown deletes the cookie, as bitcoind does


def test_chain_survives_a_restart(datadir: Path) -> None:
    assert start(datadir).exit_code == 0
    assert run("mine", "5", "--datadir", str(datadir)).exit_code == 0
    assert run("node", "stop", "--datadir", str(datadir)).exit_code == 0
    assert start(datadir).exit_code == 0
    status = run("node", "status", "--datadir", str(datadir))
    assert "height:    5" in status.output
    assert run("node", "stop", "--datadir", str(datadir)).exit_code == 0


def test_errors_are_one_line_and_non_zero(datadir: Path) -> None:
    no_node = run("mine", "1", "--datadir", str(datadir))
    assert no_node.exit_code == 1
    assert no_node.output.strip().startswith("Error: no node is running")
    assert len(no_node.output.strip().splitlines()) == 1

    assert start(datadir).exit_code == 0
    bad_amount = run("fund", demo.DemoKey("x").address, "abc", "--datadir", str(datadir))
    assert bad_amount.exit_code == 1 and "invalid amount" in bad_amount.output
    bad_address = run("fund", "not-an-address", "1", "--datadir", str(datadir))
    assert bad_address.exit_code == 1
    assert "address" in bad_address.output and "code -5" in bad_address.output
    poor = run("fund", demo.DemoKey("x").address, "1", "--datadir", str(datadir))
    assert poor.exit_code == 1 and "code -6" in poor.output  # no mature coins yet
    assert run("node", "stop", "--datadir", str(datadir)).exit_code == 0
    assert run("node", "stop", "--datadir", str(datadir)).exit_code == 1

