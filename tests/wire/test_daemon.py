"""chanhubd: configuration layers, --help, the daemon's start/stop order in process,
and a real process stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from channel.keys import pubkey_from_secret
from client.transport import HubPin, HubTransport
from hub.__main__ import main
from hub.config import FIELDS, ConfigError, HubConfig, env_name, load_config
from hub.daemon import Daemon, HubApplication
from proto import peer_pb2
from protocol.driver.grpc_bridge import open_grpc_bridge
from protocol.driver.link import LinkClosed
from tests.wire.hubfixture import (
    RecordingAdminService,
    RecordingHubService,
    RecordingService,
    new_node_secret,
)

REPO = Path(__file__).resolve().parents[2]


def test_toml_then_environment_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "chanhubd.toml"
    toml.write_text('fee_base_msat = 10\nfee_ppm = 20\nminimum_depth = 6\n'
                    'listen = "127.0.0.1:1"\ntower = false\n')
    environ = {"CHANHUB_FEE_PPM": "30", "CHANHUB_MINIMUM_DEPTH": "7", "UNRELATED": "x"}
    config = load_config(toml, environ, {"minimum_depth": "8", "data_dir": str(tmp_path)})
    assert (config.fee_base_msat, config.fee_ppm, config.minimum_depth) == (10, 30, 8)
    assert config.listen == "127.0.0.1:1" and config.data_dir == tmp_path
    # Without --config, <data dir>/chanhubd.toml is read.
    assert load_config(None, {}, {"data_dir": str(tmp_path)}).fee_base_msat == 10
    assert load_config(None, {}, {"data_dir": str(tmp_path / "empty")}).fee_base_msat == 1000
    assert config.path(config.tls_key_file) == tmp_path / "tls.key"


@pytest.mark.parametrize(("toml", "environ", "flags", "message"), [
    ("fee_bse_msat = 1\n", {}, {}, "unknown option 'fee_bse_msat'"),
    ("", {"CHANHUB_FEE_PPM": "ten"}, {}, "CHANHUB_FEE_PPM"),
    ("", {}, {"cltv_expiry_delta_blocks": "20"}, "cltv_expiry_delta_blocks"),
    ("", {}, {"fee_base_msat": "-1"}, "negative"),
    ("fee_ppm = 1.5\n", {}, {}, "not an integer"),
    ("", {"CHANHUB_TOWER": "maybe"}, {}, "not a boolean"),
    ("", {}, {"listen": "nowhere"}, "host:port"),
    ("", {}, {"max_accepted_htlcs": "484"}, "483"),
    ("", {}, {"tower": True, "tower_listen": "nowhere"}, "tower_listen"),
])
def test_bad_options_are_refused_with_their_name(tmp_path: Path, toml: str,
                                                 environ: dict[str, str],
                                                 flags: dict[str, Any], message: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(file, environ, flags)


def test_help_documents_every_option() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in text
        assert env_name(name) in text


async def test_daemon_starts_services_in_order_and_stops_gracefully(tmp_path: Path) -> None:
    log: list[str] = []
    node_id = pubkey_from_secret(new_node_secret())
    service = RecordingHubService(node_id)

    @asynccontextmanager
    async def factory(config: HubConfig, tls: Any) -> Any:
        log.append("open application")
        yield HubApplication(node_id, service, RecordingAdminService(),
                             [RecordingService("store", log), RecordingService("router", log)])
        log.append("close application")

    config = HubConfig(data_dir=tmp_path / "hub", listen="127.0.0.1:0")
    daemon = Daemon(config, factory)
    async with trio.open_nursery() as nursery:
        started = await nursery.start(daemon.run)
        assert log == ["open application", "start store", "start router"]
        key_mode = (tmp_path / "hub" / "tls.key").stat().st_mode & 0o777
        assert key_mode == 0o600
        assert (tmp_path / "hub").stat().st_mode & 0o777 == 0o700
        async with open_grpc_bridge() as bridge:
            transport = await HubTransport.connect(
                bridge, f"127.0.0.1:{started.port}", node_secret=new_node_secret(),
                pin=HubPin.from_fingerprint(started.tls_fingerprint_sha256),
                expected_hub_node_id=node_id)
            link = await transport.open_peer_link()
            while transport.node_id not in service.links:
                await service.link_arrived.wait()
            await service.links[transport.node_id].send(peer_pb2.PeerFrame())
            daemon.request_shutdown()
            await link.receive()  # flushed before the link closed
            with pytest.raises(LinkClosed):
                await link.receive()
            await transport.aclose()
    assert log[3:] == ["drain router", "drain store", "close application"]


def test_chanhubd_process_stops_on_sigterm_and_keeps_its_identity(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHANHUB_LISTEN": "127.0.0.1:0"}
    command = [sys.executable, "-m", "hub", "--application",
               "tests.wire.hubfixture:open_test_application", "--data-dir", str(tmp_path)]
    fingerprints = []
    for _ in range(2):
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.communicate()[1]
        started = json.loads(line)
        fingerprints.append(started["tls_cert_sha256"])

        async def use_hub(started: dict[str, Any] = started,
                          process: subprocess.Popen[str] = process) -> None:
            async with open_grpc_bridge() as bridge:
                transport = await HubTransport.connect(
                    bridge, f"127.0.0.1:{started['port']}", node_secret=new_node_secret(),
                    pin=HubPin.from_cert_file(started["tls_cert_file"]),
                    expected_hub_node_id=bytes.fromhex(started["hub_node_id"]))
                link = await transport.open_peer_link()
                assert (await transport.get_info()).chain == "regtest"
                process.send_signal(signal.SIGTERM)
                with pytest.raises(LinkClosed):
                    await link.receive()
                await transport.aclose()

        trio.run(use_hub)
        assert process.wait(timeout=30) == 0, process.communicate()[1]
    assert fingerprints[0] == fingerprints[1]
    assert (tmp_path / "admin.credential").stat().st_mode & 0o777 == 0o600
    printed = subprocess.run([*command, "--print-fingerprint"], env=env, capture_output=True,
                             text=True, cwd=REPO, check=True)
    assert printed.stdout.strip() == fingerprints[0]


def test_a_second_sigterm_cancels_a_stuck_shutdown(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "--application",
         "tests.wire.hubfixture:open_stuck_application", "--data-dir", str(tmp_path),
         "--listen", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["port"] > 0
    process.send_signal(signal.SIGTERM)
    for line in process.stderr:  # wait until the graceful path is stuck in drain
        if "drain stuck" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
