"""A real ``chanhub-tower`` process (``python -m hub.tower``) on a regtest node process
punishes an offline client's breach with HTLCs in flight: the client's appointments go
over TLS to the process, the client goes away, the cheater publishes, and the penalty
the tower broadcasts confirms. Then SIGTERM stops the tower cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from channel.tx import Tx
from client.tower import TowerClient
from client.transport import HubPin
from protocol.driver.grpc_bridge import open_grpc_bridge
from regtest.harness import NodeEndpoint
from regtest.twoparty import TwoPartyChannel
from tests.tower.test_breach import (
    TO_SELF_DELAY,
    breach_with_htlcs,
    deliver_with,
    revoked_watches,
)
from tests.wire.hubfixture import new_node_secret

REAL_TIME_BOUND_S = 60.0


def test_tower_process_punishes_an_offline_clients_breach(node_process: NodeEndpoint,
                                                          tmp_path: Path) -> None:
    tower = subprocess.Popen(
        [sys.executable, "-m", "hub.tower", "--data-dir", str(tmp_path / "tower"),
         "--listen", "127.0.0.1:0", "--chain-rpc-url", node_process.url,
         "--chain-rpc-cookie-file", str(node_process.cookie_file), "--poll-interval", "0.05",
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tower.stdout is not None
        line = tower.stdout.readline()
        assert line, tower.communicate(timeout=10)[1]
        started = json.loads(line)
        cert_pem = Path(started["tls_cert_file"]).read_bytes()

        async def scenario() -> None:
            async with node_process.rpc() as rpc, open_grpc_bridge() as bridge:
                pair = TwoPartyChannel(rpc, label="tower process", to_self_delay=TO_SELF_DELAY)
                _, revoked_tx, _ = await breach_with_htlcs(pair)
                client = TowerClient(bridge, f"127.0.0.1:{started['port']}",
                                     node_secret=new_node_secret(),
                                     pin=HubPin.from_fingerprint(started["tls_cert_sha256"]),
                                     outbox_dir=tmp_path / "client" / "tower-outbox",
                                     expected_tower_node_id=bytes.fromhex(
                                         started["tower_node_id"]))
                assert await deliver_with(client, pair) == len(revoked_watches(pair.b))
                assert Path(started["tls_cert_file"]).read_bytes() == cert_pem

                await pair.broadcast(revoked_tx)
                await pair.mine(1)
                deadline = time.monotonic() + REAL_TIME_BOUND_S
                while not (mempool := await rpc.getrawmempool()):
                    assert time.monotonic() < deadline, "the tower broadcast nothing"
                    assert tower.poll() is None, tower.communicate()[1]
                    await trio.sleep(0.05)  # polling a real subprocess, bounded
                penalty = Tx.parse(await rpc.getrawtransaction(mempool[0]))
                assert {i.outpoint.txid for i in penalty.inputs} == {revoked_tx.txid()}
                assert len(penalty.inputs) == 3  # to_local and both HTLC outputs
                assert penalty.outputs[0].script_pubkey == pair.b.wallet_script
                await pair.mine(1)
                assert await rpc.getrawmempool() == []
                assert (await rpc.gettxout(penalty.txid_hex(), 0)) is not None

        trio.run(scenario)
        tower.send_signal(signal.SIGTERM)
        assert tower.wait(timeout=30) == 0
    finally:
        if tower.poll() is None:
            tower.kill()
            tower.wait(timeout=10)
