"""The gRPC edge under many clients: threads, memory, messages/s and CPU per message.

    python -m bench.edge_bench [--clients 1000] [--rounds 20] [--messages-per-frame 1]

A real chanhubd process (``python -m hub``, TLS, node-key authentication) runs an
echo application: every peer-link frame a client sends comes straight back on its
link. This process hosts all the clients on one bridge (one asyncio thread): each
connects with its own node key, authenticates, opens its peer link, and all stay
connected. Then every client sends ``rounds`` frames, one at a time, waiting for each
echo (so every client always has one frame in flight: ``clients`` concurrent round
trips).

Printed: the hub process's OS threads and RSS with all clients connected (from
/proc), frames per second through the hub (each frame crosses the hub's bridge twice:
in to trio, out to asyncio), and the hub's CPU time (user + system, from /proc) per
frame and per crossing. The clients share the machine with the hub, so the rate is a
floor of what the hub alone could do; the hub CPU per frame is the figure to compare
with DESIGN.md's ~160 us per gRPC message plus ~60 us per crossing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from channel.keys import pubkey_from_secret
from client.transport import HubPin, HubTransport
from hub.config import HubConfig
from hub.daemon import HubApplication
from hub.tls import TlsIdentity
from proto import admin_pb2, client_pb2, peer_pb2
from protocol.driver.grpc_bridge import open_grpc_bridge
from protocol.driver.link import FrameLink, LinkClosed

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class EchoHubService:
    """Echo every frame back on the link it came from; nothing else."""

    def __init__(self, hub_node_id: bytes) -> None:
        self.hub_node_id = hub_node_id

    async def get_info(self, client_node_id: bytes) -> client_pb2.GetInfoResponse:
        return client_pb2.GetInfoResponse(hub_node_id=self.hub_node_id, chain="regtest")

    async def request_inbound(self, client_node_id: bytes, request: Any) -> Any:
        return client_pb2.InboundOrder()

    async def get_inbound_order(self, client_node_id: bytes, request: Any) -> Any:
        return client_pb2.InboundOrder()

    async def list_channels(self, client_node_id: bytes, request: Any) -> Any:
        return client_pb2.ListChannelsResponse()

    async def list_payments(self, client_node_id: bytes, request: Any) -> Any:
        return client_pb2.ListPaymentsResponse()

    async def subscribe_events(self, client_node_id: bytes, request: Any, events: Any) -> None:
        return

    async def on_peer_link(self, client_node_id: bytes, link: FrameLink) -> None:
        try:
            while True:
                await link.send(await link.receive())
        except LinkClosed:
            return


class NoAdmin:
    async def get_info(self) -> admin_pb2.GetInfoResponse:
        return admin_pb2.GetInfoResponse()

    async def list_clients(self, request: Any) -> Any:
        return admin_pb2.ListClientsResponse()

    async def list_channels(self, request: Any) -> Any:
        return client_pb2.ListChannelsResponse()

    async def list_payments(self, request: Any) -> Any:
        return admin_pb2.ListPaymentsResponse()

    async def set_fee_policy(self, request: Any) -> Any:
        return client_pb2.FeePolicy()

    async def close_channel(self, request: Any) -> Any:
        return client_pb2.CloseChannelResponse()


@asynccontextmanager
async def open_echo_application(config: HubConfig, tls: TlsIdentity
                                ) -> AsyncIterator[HubApplication]:
    """The ``ApplicationFactory`` the benchmark's chanhubd runs."""
    hub_node_id = pubkey_from_secret(os.urandom(32))
    yield HubApplication(hub_node_id, EchoHubService(hub_node_id), NoAdmin())


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def proc_threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_clients(started: dict[str, Any], pid: int, clients: int, rounds: int,
                      messages_per_frame: int) -> None:
    frame = peer_pb2.PeerFrame(messages=[
        peer_pb2.PeerMessage(update_add_htlc=peer_pb2.UpdateAddHtlc(
            channel_id=b"\x01" * 32, id=n, amount_msat=1000, payment_hash=b"\x02" * 32,
            cltv_expiry=500, onion_routing_packet=b"\x03" * 200))
        for n in range(messages_per_frame)])
    threads_idle = proc_threads(pid)
    async with open_grpc_bridge() as bridge:
        transports: list[HubTransport] = []
        links: list[Any] = []
        limiter = trio.CapacityLimiter(50)  # connect in waves, not 1,000 handshakes at once

        async def join() -> None:
            async with limiter:
                transport = await HubTransport.connect(
                    bridge, f"127.0.0.1:{started['port']}", node_secret=os.urandom(32),
                    pin=HubPin.from_cert_file(started["tls_cert_file"]),
                    call_timeout_seconds=120)
                transports.append(transport)
                links.append(await transport.open_peer_link())

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(join)
        connect_seconds = time.perf_counter() - t0
        # Every link is open and has made one round trip before measuring.
        async with trio.open_nursery() as nursery:
            for link in links:
                nursery.start_soon(_round_trips, link, frame, 1)
        threads_connected = proc_threads(pid)
        rss_connected = proc_rss_mb(pid)
        print(f"clients connected:        {clients} in {connect_seconds:.1f} s "
              f"(TLS + challenge + link each)")
        print(f"hub OS threads:           {threads_idle} idle -> {threads_connected} "
              f"with {clients} open links")
        print(f"hub RSS:                  {rss_connected:.0f} MB "
              f"({rss_connected * 1024 / clients:.0f} kB per client, upper bound)")

        cpu0, t0 = proc_cpu_seconds(pid), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for link in links:
                nursery.start_soon(_round_trips, link, frame, rounds)
        elapsed = time.perf_counter() - t0
        hub_cpu = proc_cpu_seconds(pid) - cpu0
        frames = clients * rounds
        print(f"frames through the hub:   {frames} ({messages_per_frame} message(s) each) "
              f"in {elapsed:.2f} s = {frames / elapsed:,.0f} frames/s, "
              f"{frames * messages_per_frame / elapsed:,.0f} protocol messages/s")
        print(f"hub CPU per frame:        {hub_cpu / frames * 1e6:.0f} us "
              f"(received and sent again: 2 gRPC messages, 2 bridge crossings); "
              f"{hub_cpu / frames / 2 * 1e6:.0f} us per gRPC message incl. its crossing")
        print(f"hub CPU utilisation:      {hub_cpu / elapsed * 100:.0f}% of one core "
              "(clients share the 2 cores)")
        for transport in transports:
            await transport.aclose()


async def _round_trips(link: Any, frame: peer_pb2.PeerFrame, rounds: int) -> None:
    for _ in range(rounds):
        await link.send(frame)
        await link.receive()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--messages-per-frame", type=int, default=1)
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "--application", "bench.edge_bench:open_echo_application",
             "--data-dir", data_dir, "--listen", "127.0.0.1:0", "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert process.stdout is not None
            started = json.loads(process.stdout.readline())
            trio.run(run_clients, started, process.pid, args.clients, args.rounds,
                     args.messages_per_frame)
        finally:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main(sys.argv[1:])
