"""End to end with real processes on loopback: the harness's node and chanhubd
processes, reached from here through the public transports, as a client or an
operator would.

The hub's business logic here is `tests.wire.hubfixture:open_test_application`
(the real edge, TLS and authentication in a real chanhubd process, recording
services behind them): these tests are about the edge and the harness. Payments
between real processes on the real hub are in test_payments_e2e.py, the kill -9
crash test in test_hub_crash.py, disputes in test_harness_*.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import trio
from click.testing import CliRunner

from client.transport import HubPin, HubTransport
from hub.admin_transport import AdminTransport
from proto import admin_pb2, client_pb2, client_pb2_grpc
from protocol.driver.grpc_bridge import RpcStatusError, open_grpc_bridge
from protocol.driver.wire_auth import PinMismatch
from regtest.cli import main as regtest_cli
from regtest.harness import (
    ClientEndpoint,
    HarnessError,
    HubEndpoint,
    NodeEndpoint,
    kill_hub,
    run_chanhub,
    running_client,
    running_hub,
    running_node,
    start_hub,
    stop_hub,
)
from tests.wire.hubfixture import new_node_secret

TEST_APPLICATION = "tests.wire.hubfixture:open_test_application"


@pytest.fixture
def hub_application() -> str:
    return TEST_APPLICATION


def test_a_client_pinning_another_certificate_sends_nothing(hub_process: HubEndpoint,
                                                            tmp_path: Path) -> None:
    wrong = "00" * 32

    async def connect() -> None:
        async with open_grpc_bridge() as bridge:
            with pytest.raises(PinMismatch):
                await HubTransport.connect(bridge, hub_process.target,
                                           node_secret=new_node_secret(),
                                           pin=HubPin.from_fingerprint(wrong))
            # the right pin, by file and by fingerprint, connects and authenticates
            for pin in (HubPin.from_cert_file(hub_process.tls_cert_file),
                        HubPin.from_fingerprint(hub_process.tls_cert_sha256)):
                transport = await HubTransport.connect(
                    bridge, hub_process.target, node_secret=new_node_secret(), pin=pin,
                    expected_hub_node_id=hub_process.hub_node_id)
                async with transport:
                    assert (await transport.get_info()).chain == "regtest"

    trio.run(connect)


def test_a_call_without_tls_or_without_credentials_is_refused(hub_process: HubEndpoint
                                                              ) -> None:
    async def calls() -> None:
        async with open_grpc_bridge() as bridge:
            async def plaintext() -> grpc.StatusCode:
                async with grpc.aio.insecure_channel(hub_process.target) as channel:
                    stub = client_pb2_grpc.HubStub(channel)
                    try:
                        await stub.GetInfo(client_pb2.GetInfoRequest(), timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                raise AssertionError("a plaintext call was answered")

            assert await bridge.run_in_asyncio(plaintext) == grpc.StatusCode.UNAVAILABLE

            async def no_session() -> grpc.StatusCode:
                root = hub_process.tls_cert_file.read_bytes()
                credentials = grpc.ssl_channel_credentials(root_certificates=root)
                async with grpc.aio.secure_channel(
                        hub_process.target, credentials,
                        options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
                    stub = client_pb2_grpc.HubStub(channel)
                    try:
                        await stub.GetInfo(client_pb2.GetInfoRequest(), timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                raise AssertionError("a call without a session was answered")

            assert await bridge.run_in_asyncio(no_session) == grpc.StatusCode.UNAUTHENTICATED

    trio.run(calls)


def test_the_operator_needs_the_admin_credential(hub_process: HubEndpoint,
                                                 tmp_path: Path) -> None:
    forged = tmp_path / "forged.credential"
    real = hub_process.admin_credential_file.read_text().strip()
    forged.write_text(real[:-1] + ("0" if real[-1] != "0" else "1"))
    os.chmod(forged, 0o600)

    async def calls() -> None:
        async with open_grpc_bridge() as bridge:
            async with await AdminTransport.connect(
                    bridge, hub_process.target, credential_file=forged,
                    fingerprint=hub_process.tls_cert_sha256) as admin:
                with pytest.raises(RpcStatusError) as refused:
                    await admin.call("GetInfo", admin_pb2.GetInfoRequest())
                assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            async with await AdminTransport.connect(
                    bridge, hub_process.target,
                    credential_file=hub_process.admin_credential_file,
                    cert_pem=hub_process.tls_cert_file.read_bytes()) as admin:
                await admin.call("GetInfo", admin_pb2.GetInfoRequest())

    trio.run(calls)


def test_a_hub_killed_with_sigkill_restarts_with_its_identity(
        hub_process: HubEndpoint, node_process: NodeEndpoint) -> None:
    datadir = hub_process.datadir
    assert running_hub(datadir) == hub_process
    with pytest.raises(HarnessError, match="already running"):
        start_hub(datadir, node_process, application=TEST_APPLICATION)
    assert kill_hub(datadir)
    assert running_hub(datadir) is None
    with pytest.raises(ProcessLookupError):
        os.kill(hub_process.pid, 0)  # the process is gone, not a zombie
    again = start_hub(datadir, node_process, application=TEST_APPLICATION)
    assert again.tls_cert_sha256 == hub_process.tls_cert_sha256
    assert again.admin_credential_file.read_text() == \
        hub_process.admin_credential_file.read_text()
    assert again.pid != hub_process.pid
    assert stop_hub(datadir) and not stop_hub(datadir)


@pytest.fixture
def network_dir(tmp_path: Path) -> Iterator[Path]:
    datadir = tmp_path / "network"
    yield datadir
    CliRunner().invoke(regtest_cli, ["down", "--datadir", str(datadir)])


def test_up_status_down_from_separate_invocations(network_dir: Path) -> None:
    runner = CliRunner()
    started = runner.invoke(regtest_cli, ["up", "--clients", "1", "--hub-application",
                                          TEST_APPLICATION, "--datadir", str(network_dir)])
    assert started.exit_code == 0, started.output
    hub = running_hub(network_dir / "hub")
    assert hub is not None and running_node(network_dir / "node") is not None
    assert f"hub:    running at {hub.target}" in started.output
    assert hub.tls_cert_sha256 in started.output
    assert str(hub.admin_credential_file) in started.output
    alice = running_client(network_dir / "clients" / "alice")
    assert alice is not None  # `chanhub serve` said it is online, with its own store
    assert f"alice:  online (pid {alice.pid}), node id {alice.node_id.hex()}" in started.output
    # alice dials her link proxy (`up` puts one in front of the hub for each client)
    assert alice.hub_target != hub.target
    assert f"chanhub --data-dir {alice.datadir} --hub {alice.hub_target}" in started.output
    assert f"link     via proxy {alice.hub_target}" in started.output
    assert alice.wallet_address and alice.wallet_address in started.output

    again = runner.invoke(regtest_cli, ["up", "--clients", "0", "--datadir", str(network_dir)])
    assert again.exit_code == 1 and "already running" in again.output

    status = runner.invoke(regtest_cli, ["status", "--datadir", str(network_dir)])
    assert status.exit_code == 0 and f"running at {hub.target}" in status.output

    stopped = runner.invoke(regtest_cli, ["down", "--datadir", str(network_dir)])
    assert stopped.exit_code == 0 and "stopped: alice, hub, node" in stopped.output
    assert running_client(network_dir / "clients" / "alice") is None
    assert running_hub(network_dir / "hub") is None
    assert running_node(network_dir / "node") is None
    status = runner.invoke(regtest_cli, ["status", "--datadir", str(network_dir)])
    assert "hub:    stopped" in status.output and "node:   stopped" in status.output
    assert "alice:  stopped" in status.output


def test_a_failed_up_leaves_nothing_running(network_dir: Path) -> None:
    failed = CliRunner().invoke(regtest_cli, [
        "up", "--clients", "0", "--hub-application", "tests.wire.hubfixture:no_such_factory",
        "--datadir", str(network_dir)])
    assert failed.exit_code == 1
    assert "chanhubd exited or printed no start-up line" in failed.output
    assert "no_such_factory" in failed.output  # the tail of chanhubd's log says why
    assert running_node(network_dir / "node") is None


def test_a_second_process_on_a_served_client_store_gets_one_clear_line(
        client_processes: Callable[[str], ClientEndpoint], hub_process: HubEndpoint) -> None:
    alice = client_processes("alice")
    with pytest.raises(HarnessError) as refused:
        run_chanhub(alice.datadir, hub_process, "history")
    message = str(refused.value)
    assert message.startswith("chanhub history: error:"), message
    assert "in use" in message and "Traceback" not in message
    assert running_client(alice.datadir) == alice  # the serving process is untouched
