"""The real hub (``python -m hub``, default application) against a regtest node process."""

from __future__ import annotations

import base64
import json

import trio
from click.testing import CliRunner

from client.transport import HubPin, HubTransport
from hub.ctl import main as ctl_main
from protocol.driver.grpc_bridge import open_grpc_bridge
from regtest.harness import HubEndpoint, NodeEndpoint
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
