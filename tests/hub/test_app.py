"""The real hub (``python -m hub``, default application) against a regtest node process."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner

from client.transport import HubPin, HubTransport
from hub.ctl import main as ctl_main
from protocol.driver.grpc_bridge import open_grpc_bridge
from regtest.harness import HubEndpoint, NodeEndpoint, chanhub_command, client_env, run_chanhub
from tests.wire.hubfixture import new_node_secret


def test_real_hub_answers_get_info(hub_process: HubEndpoint, node_process: NodeEndpoint
                                   ) -> None:
    async def check() -> None:
        async with node_process.rpc() as rpc:
            tip = await rpc.getblockcount()
        async with open_grpc_bridge() as bridge:
            transport = await HubTransport.connect(
                bridge, hub_process.target, node_secret=new_node_secret(),
                pin=HubPin.from_cert_file(hub_process.tls_cert_file),
                expected_hub_node_id=hub_process.hub_node_id)
            info = await transport.get_info()
            await transport.aclose()
        assert info.hub_node_id == hub_process.hub_node_id
        assert info.chain == "regtest"
        assert info.block_height == tip
        assert info.minimum_depth == 1
        assert info.fee_policy.base_fee_msat == 1000

    trio.run(check)
    result = CliRunner().invoke(ctl_main, [
        "--rpcserver", hub_process.target, "--tls-cert", str(hub_process.tls_cert_file),
        "--admin-credential", str(hub_process.admin_credential_file), "--json", "info"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["hub"]["chain"] == "regtest"
    assert base64.b64decode(shown["hub"]["hub_node_id"]) == hub_process.hub_node_id


def test_real_hub_funds_inbound_for_the_cli(tmp_path: Path, hub_process: HubEndpoint,
                                           node_process: NodeEndpoint) -> None:
    """The operator funds chanhubd's wallet (chanhubctl wallet address|balance); a
    `chanhub inbound` client gets a channel the hub funds, usable at the hub's depth."""
    def ctl(*args: str) -> Any:
        result = CliRunner().invoke(ctl_main, [
            "--rpcserver", hub_process.target, "--tls-cert", str(hub_process.tls_cert_file),
            "--admin-credential", str(hub_process.admin_credential_file), "--json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    def until_real(predicate: Callable[[], bool], what: str) -> None:
        """chanhubd polls its node every second: bounded polling of a real process."""
        deadline = time.monotonic() + 60
        while not predicate():
            assert time.monotonic() < deadline, f"still waiting for {what}"
            time.sleep(0.2)

    async def node_call(method: str, *params: Any) -> Any:
        async with node_process.rpc() as rpc:
            return await rpc.call(method, *params)

    address = ctl("wallet", "address")["address"]
    assert address.startswith("bcrt1q")
    trio.run(node_call, "sendtoaddress", address, Decimal("0.02"))
    trio.run(node_call, "generatetoaddress", 1, trio.run(node_call, "getnewaddress"))
    until_real(lambda: int(ctl("wallet", "balance").get("confirmed_sat", 0)) == 2_000_000,
               "the hub's wallet to see its coins")
    assert int(ctl("info")["onchain_confirmed_sat"]) == 2_000_000

    datadir = tmp_path / "alice"
    datadir.mkdir()
    run_chanhub(datadir, hub_process, "init")
    shown = json.loads(run_chanhub(datadir, hub_process, "--json", "inbound", "500000",
                                   "--idempotency-key", "first", "--no-wait",
                                   node=node_process))
    assert shown["state"] == "funding" and shown["lsp_balance_sat"] == 500_000
    until_real(lambda: len(trio.run(node_call, "getrawmempool")) == 1,
               "the hub to broadcast the funding")
    trio.run(node_call, "generatetoaddress", 1, trio.run(node_call, "getnewaddress"))
    done = json.loads(run_chanhub(datadir, hub_process, "--json", "inbound", "500000",
                                  "--idempotency-key", "first", node=node_process))
    assert done["order_id"] == shown["order_id"] and done["state"] == "completed"
    [channel] = ctl("channels")["channels"]
    assert channel["state"] == "CHANNEL_STATE_OPEN" and int(channel["capacity_sat"]) == 500_000
    assert not channel.get("client_funded", False)
    refused = subprocess.run(chanhub_command(datadir, hub_process, "inbound", "5000000",
                                             node=node_process),
                             env=client_env(), capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("error: ") and "outside" in refused.stderr
