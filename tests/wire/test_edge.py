"""The gRPC edge and the client transport over real loopback sockets and real TLS:
authentication, frames both ways, and every refusal (each changes nothing)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio

from channel.keys import pubkey_from_secret
from channel.signing import sign
from client.transport import HubPin, HubTransport
from hub.admin_transport import AdminTransport
from hub.edge import EdgeConfig
from hub.tls import make_self_signed
from proto import admin_pb2, admin_pb2_grpc, client_pb2, client_pb2_grpc, peer_pb2
from protocol.driver.grpc_bridge import BridgedStream, MessageTooLarge, RpcStatusError
from protocol.driver.link import FrameLink, LinkClosed
from protocol.driver.wire_auth import (
    ADMIN_METADATA_KEY,
    SESSION_METADATA_KEY,
    PinMismatch,
    challenge_digest,
)
from tests.wire.hubfixture import RunningHub, new_node_secret, running_hub

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED


def fee_frame(*feerates: int) -> peer_pb2.PeerFrame:
    return peer_pb2.PeerFrame(messages=[
        peer_pb2.PeerMessage(update_fee=peer_pb2.UpdateFee(feerate_per_kw=rate))
        for rate in feerates])


async def hub_link_of(hub: RunningHub, node_id: bytes) -> FrameLink:
    while node_id not in hub.service.links:
        await hub.service.link_arrived.wait()
    return hub.service.links[node_id]


class RawConnection:
    """One gRPC connection without the transport's help: for hand-made requests."""

    def __init__(self, hub: RunningHub, *, tls: bool = True,
                 max_send_bytes: int | None = None) -> None:
        self.hub = hub
        self.tls = tls
        self.max_send_bytes = max_send_bytes
        self.channel: Any = None

    async def __aenter__(self) -> RawConnection:
        async def make() -> Any:
            options: list[tuple[str, Any]] = [("grpc.ssl_target_name_override", "localhost")]
            if self.max_send_bytes:
                options.append(("grpc.max_send_message_length", self.max_send_bytes))
            if not self.tls:
                return grpc.aio.insecure_channel(self.hub.target, options=options)
            credentials = grpc.ssl_channel_credentials(self.hub.tls.cert_pem)
            return grpc.aio.secure_channel(self.hub.target, credentials, options=options)

        self.channel = await self.hub.bridge.run_in_asyncio(make)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hub.bridge.run_in_asyncio(self.channel.close)

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        async def go() -> Any:
            try:
                return await fn(self.channel)
            except grpc.aio.AioRpcError as exc:
                raise RpcStatusError(exc.code(), exc.details() or "") from None

        return await self.hub.bridge.run_in_asyncio(go)

    async def hub_call(self, method: str, request: Any, metadata: Any = ()) -> Any:
        return await self.run(lambda ch: getattr(client_pb2_grpc.HubStub(ch), method)(
            request, metadata=metadata, timeout=10))

    async def admin_call(self, method: str, request: Any, metadata: Any = ()) -> Any:
        return await self.run(lambda ch: getattr(admin_pb2_grpc.AdminStub(ch), method)(
            request, metadata=metadata, timeout=10))

    async def challenge(self, node_id: bytes) -> client_pb2.Challenge:
        result: client_pb2.Challenge = await self.hub_call(
            "GetChallenge", client_pb2.GetChallengeRequest(client_node_id=node_id))
        return result

    async def answer(self, challenge: client_pb2.Challenge, secret: bytes
                     ) -> client_pb2.AuthenticateRequest:
        digest = challenge_digest(challenge.hub_node_id, challenge.client_node_id,
                                  challenge.nonce, challenge.expires_at_unix)
        return client_pb2.AuthenticateRequest(client_node_id=challenge.client_node_id,
                                              nonce=challenge.nonce,
                                              signature=sign(secret, digest))

    async def login(self, secret: bytes) -> tuple[tuple[str, str], ...]:
        challenge = await self.challenge(pubkey_from_secret(secret))
        session = await self.hub_call("Authenticate", await self.answer(challenge, secret))
        return ((SESSION_METADATA_KEY, session.session_credential.hex()),)


async def expect_status(code: grpc.StatusCode, awaitable: Awaitable[Any]) -> RpcStatusError:
    with pytest.raises(RpcStatusError) as info:
        await awaitable
    assert info.value.code == code, info.value
    return info.value


async def test_client_authenticates_calls_and_exchanges_frames_both_ways(tmp_path: Path
                                                                         ) -> None:
    async with running_hub(tmp_path) as hub:
        secret = new_node_secret()
        async with await hub.connect(secret) as transport:
            assert transport.hub_node_id == hub.hub_node_id
            info = await transport.get_info()
            assert info.hub_node_id == hub.hub_node_id and info.chain == "regtest"
            order = await transport.request_inbound(
                client_pb2.RequestInboundRequest(lsp_balance_sat=100_000))
            assert order.request.lsp_balance_sat == 100_000
            link = await transport.open_peer_link()
            hub_link = await hub_link_of(hub, transport.node_id)
            assert hub.edge.connected_clients() == [transport.node_id]
            for n in range(50):
                await link.send(fee_frame(n, n + 1))
                await hub_link.send(fee_frame(1000 + n))
            for n in range(50):
                frame = await link.receive()
                assert [m.update_fee.feerate_per_kw for m in frame.messages] == [1000 + n]
            while len(hub.service.received.get(transport.node_id, [])) < 50:
                await hub.service.frame_received.wait()
            got = [[m.update_fee.feerate_per_kw for m in f.messages]  # type: ignore[attr-defined]
                   for f in hub.service.received[transport.node_id]]
            assert got == [[n, n + 1] for n in range(50)]
            # Every call reached the service as this client, and only as this client.
            assert {node for _, node in hub.service.calls} == {transport.node_id}
            await link.aclose()
            with pytest.raises(LinkClosed):
                await hub_link.receive()
            with pytest.raises(LinkClosed):
                await link.send(fee_frame(1))


async def test_pin_by_fingerprint(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        fingerprint = hub.tls.fingerprint_sha256
        assert len(fingerprint) == 64
        colon_form = ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()
        transport = await HubTransport.connect(
            hub.bridge, hub.target, node_secret=new_node_secret(),
            pin=HubPin.from_fingerprint(colon_form))
        async with transport:
            assert (await transport.get_info()).hub_node_id == hub.hub_node_id


async def test_wrong_fingerprint_or_certificate_is_refused_before_anything_is_sent(
        tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        wrong_fingerprint = "00" * 32
        with pytest.raises(PinMismatch):
            await HubTransport.connect(hub.bridge, hub.target, node_secret=new_node_secret(),
                                       pin=HubPin.from_fingerprint(wrong_fingerprint))
        other_cert, _ = make_self_signed()
        await expect_status(grpc.StatusCode.UNAVAILABLE, HubTransport.connect(
            hub.bridge, hub.target, node_secret=new_node_secret(),
            pin=HubPin(cert_pem=other_cert), call_timeout_seconds=5))
        assert hub.service.calls == []
        assert hub.edge.authenticator.pending_challenge_count() == 0


async def test_plaintext_connection_is_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub, tls=False) as raw:
        await expect_status(grpc.StatusCode.UNAVAILABLE,
                            raw.challenge(pubkey_from_secret(new_node_secret())))
        assert hub.edge.authenticator.pending_challenge_count() == 0


async def test_wrong_key_proof_is_refused_and_consumes_the_challenge(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub) as raw:
        secret, impostor = new_node_secret(), new_node_secret()
        challenge = await raw.challenge(pubkey_from_secret(secret))
        forged = await raw.answer(challenge, impostor)  # signed by another key
        await expect_status(UNAUTHENTICATED, raw.hub_call("Authenticate", forged))
        # The challenge is gone: even the right answer to it is refused now.
        await expect_status(UNAUTHENTICATED,
                            raw.hub_call("Authenticate", await raw.answer(challenge, secret)))
        # Garbage signatures and a challenge for someone else are refused too.
        challenge = await raw.challenge(pubkey_from_secret(secret))
        bad = await raw.answer(challenge, secret)
        bad.signature = bad.signature[:-1] + bytes([bad.signature[-1] ^ 1])
        await expect_status(UNAUTHENTICATED, raw.hub_call("Authenticate", bad))
        challenge = await raw.challenge(pubkey_from_secret(secret))
        stolen = await raw.answer(challenge, secret)
        stolen.client_node_id = pubkey_from_secret(impostor)
        await expect_status(UNAUTHENTICATED, raw.hub_call("Authenticate", stolen))
        await expect_status(UNAUTHENTICATED, raw.hub_call(
            "GetChallenge", client_pb2.GetChallengeRequest(client_node_id=b"\x02" * 5)))
        assert hub.service.calls == []


async def test_replayed_and_expired_challenge_answers_are_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub) as raw:
        secret = new_node_secret()
        challenge = await raw.challenge(pubkey_from_secret(secret))
        answer = await raw.answer(challenge, secret)
        session = await raw.hub_call("Authenticate", answer)
        assert len(session.session_credential) == 32
        await expect_status(UNAUTHENTICATED, raw.hub_call("Authenticate", answer))
        # The same answer on another connection is no better.
        async with RawConnection(hub) as other:
            await expect_status(UNAUTHENTICATED, other.hub_call("Authenticate", answer))
        challenge = await raw.challenge(pubkey_from_secret(secret))
        hub.clock[0] += 61  # past the 60 s challenge lifetime
        await expect_status(UNAUTHENTICATED,
                            raw.hub_call("Authenticate", await raw.answer(challenge, secret)))


async def test_call_without_or_with_bad_credential_is_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub) as raw:
        for metadata in [(), ((SESSION_METADATA_KEY, "zz"),),
                         ((SESSION_METADATA_KEY, "00" * 32),)]:
            await expect_status(UNAUTHENTICATED,
                                raw.hub_call("GetInfo", client_pb2.GetInfoRequest(), metadata))
            await expect_status(UNAUTHENTICATED, raw.hub_call(
                "ListChannels", client_pb2.ListChannelsRequest(), metadata))

            async def open_link(channel: Any, metadata: Any = metadata) -> Any:
                call = client_pb2_grpc.HubStub(channel).PeerLink(None, metadata=metadata)
                await call.write(fee_frame(1))
                return await call.read()

            await expect_status(UNAUTHENTICATED, raw.run(open_link))

            async def subscribe(channel: Any, metadata: Any = metadata) -> Any:
                call = client_pb2_grpc.HubStub(channel).SubscribeEvents(
                    client_pb2.SubscribeEventsRequest(), metadata=metadata)
                return await call.read()

            await expect_status(UNAUTHENTICATED, raw.run(subscribe))
        assert hub.service.calls == [] and hub.service.links_opened == 0
        # A session that expired is refused the same way.
        metadata = await raw.login(new_node_secret())
        hub.clock[0] += 24 * 3600 + 1
        await expect_status(UNAUTHENTICATED,
                            raw.hub_call("GetInfo", client_pb2.GetInfoRequest(), metadata))
        assert hub.service.calls == []


async def test_another_clients_credential_is_refused(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        alice = await hub.connect()
        bob = await hub.connect()
        async with alice, bob, RawConnection(hub) as thief:
            await alice.get_info()
            calls_before = list(hub.service.calls)
            stolen = alice._metadata  # Alice's credential, presented on other connections
            await expect_status(UNAUTHENTICATED,
                                thief.hub_call("GetInfo", client_pb2.GetInfoRequest(), stolen))

            async def open_link(channel: Any) -> Any:
                call = client_pb2_grpc.HubStub(channel).PeerLink(None, metadata=stolen)
                await call.write(fee_frame(1))
                return await call.read()

            await expect_status(UNAUTHENTICATED, thief.run(open_link))
            assert hub.service.calls == calls_before and hub.service.links_opened == 0
            # Bob's transport holding Alice's credential is refused too; it then
            # authenticates as itself (its own key) and the retry runs as Bob, never
            # as Alice.
            bob._metadata = stolen
            await bob.get_info()
            assert hub.service.calls[len(calls_before):] == [("get_info", bob.node_id)]
            # The service refuses requests naming another client's data.
            await expect_status(PERMISSION_DENIED, bob.list_payments(
                client_pb2.ListPaymentsRequest(cursor=alice.node_id.hex())))
            await bob.list_payments(client_pb2.ListPaymentsRequest(cursor=bob.node_id.hex()))
            # Alice's own connection still works.
            assert (await alice.get_info()).hub_node_id == hub.hub_node_id


async def test_admin_credential(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub) as raw:
        credential_file = tmp_path / "admin.credential"
        assert (credential_file.stat().st_mode & 0o777) == 0o600
        good = ((ADMIN_METADATA_KEY, hub.admin_secret),)
        info = await raw.admin_call("GetInfo", admin_pb2.GetInfoRequest(), good)
        assert info.client_count == 7
        session = await raw.login(new_node_secret())
        last = hub.admin_secret[-1]
        wrong = hub.admin_secret[:-1] + ("1" if last == "0" else "0")  # one digit off
        for metadata in [(), ((ADMIN_METADATA_KEY, wrong),),
                         ((ADMIN_METADATA_KEY, ""),), session]:
            await expect_status(UNAUTHENTICATED, raw.admin_call(
                "SetFeePolicy", admin_pb2.SetFeePolicyRequest(), metadata))
        assert hub.admin.calls == ["get_info"]
        # The admin credential opens no client session.
        await expect_status(UNAUTHENTICATED,
                            raw.hub_call("GetInfo", client_pb2.GetInfoRequest(), good))


async def test_frame_above_the_bounds_ends_the_link(tmp_path: Path) -> None:
    config = EdgeConfig(max_message_bytes=64 * 1024, max_messages_per_frame=10)
    async with running_hub(tmp_path, config) as hub:
        async with await hub.connect(max_message_bytes=64 * 1024) as transport:
            link = await transport.open_peer_link()
            big = peer_pb2.PeerFrame(messages=[peer_pb2.PeerMessage(
                error=peer_pb2.Error(data=b"x" * 70_000))])
            with pytest.raises(MessageTooLarge):
                await link.send(big)  # refused locally, nothing sent
            await link.send(fee_frame(*range(11)))  # 11 messages: above the hub's bound
            hub_link = await hub_link_of(hub, transport.node_id)
            with pytest.raises(LinkClosed):
                await link.receive()
            with pytest.raises(LinkClosed):
                await hub_link.receive()
            assert "RESOURCE_EXHAUSTED" in (link.closed_reason or "")
            assert transport.node_id not in hub.service.received
        # A sender that ignores its own bound is cut off by gRPC at the hub.
        secret = new_node_secret()
        async with RawConnection(hub, max_send_bytes=1 << 22) as raw:
            metadata = await raw.login(secret)

            async def send_big(channel: Any) -> Any:
                call = client_pb2_grpc.HubStub(channel).PeerLink(None, metadata=metadata)
                await call.write(big)
                return await call.read()

            await expect_status(grpc.StatusCode.RESOURCE_EXHAUSTED, raw.run(send_big))
        assert pubkey_from_secret(secret) not in hub.service.received


async def test_a_new_link_replaces_the_old_one(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        secret = new_node_secret()
        async with await hub.connect(secret) as first, await hub.connect(secret) as second:
            old = await first.open_peer_link()
            old_hub_end = await hub_link_of(hub, first.node_id)
            new = await second.open_peer_link()
            while hub.service.links.get(first.node_id) is old_hub_end:
                await hub.service.link_arrived.wait()
            with pytest.raises(LinkClosed):
                await old.receive()
            await hub.service.links[first.node_id].send(fee_frame(7))
            assert (await new.receive()).messages[0].update_fee.feerate_per_kw == 7


async def test_events_resume_after_the_cursor(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, await hub.connect() as transport:
        hub.service.events[transport.node_id] = [
            client_pb2.Event(sequence=n, balance_changed=client_pb2.BalanceChanged(
                local_balance_msat=n * 1000)) for n in range(1, 21)]
        events = await transport.subscribe_events(after_sequence=12)
        got = [(await events.receive()).sequence for _ in range(8)]
        assert got == list(range(13, 21))
        await events.aclose()
        with pytest.raises(LinkClosed):
            await events.receive()


async def test_stop_closes_links_and_refuses_new_calls(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        transport = await hub.connect()
        link = await transport.open_peer_link()
        hub_link = await hub_link_of(hub, transport.node_id)
        await hub_link.send(fee_frame(42))  # queued before the stop: still delivered
        await hub.edge.stop()
        assert (await link.receive()).messages[0].update_fee.feerate_per_kw == 42
        with pytest.raises(LinkClosed):
            await link.receive()
        await expect_status(grpc.StatusCode.UNAVAILABLE, transport.get_info())
        await transport.aclose()


async def test_stop_lets_an_in_flight_call_finish(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        transport = await hub.connect()
        hub.service.get_info_gate = trio.Event()
        results: list[Any] = []

        async def call() -> None:
            results.append(await transport.get_info())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await hub.service.get_info_entered.wait()
            nursery.start_soon(hub.edge.stop)
            while not hub.edge.stopping:
                await trio.lowlevel.checkpoint()
            hub.service.get_info_gate.set()  # the work in flight finishes after the stop
        assert results[0].hub_node_id == hub.hub_node_id
        await expect_status(grpc.StatusCode.UNAVAILABLE, transport.get_info())
        await transport.aclose()


async def test_slow_reader_applies_backpressure(tmp_path: Path) -> None:
    """The hub's service reads nothing: the client's sends stop after a bounded
    number of frames (credit windows + gRPC's flow-control window), nothing queues
    without bound; once the hub reads, every frame arrives, in order."""
    window = 8
    frame_bytes = 100_000
    total = 1000  # 100 MB if nothing pushed back
    async with running_hub(tmp_path, EdgeConfig(window_messages=window)) as hub:
        hub.service.read_links = False
        async with await hub.connect(window_messages=window) as transport:
            link = await transport.open_peer_link()
            hub_link = await hub_link_of(hub, transport.node_id)
            assert isinstance(hub_link, BridgedStream)
            sent = 0

            async def sender() -> None:
                nonlocal sent
                for n in range(total):
                    await link.send(peer_pb2.PeerFrame(messages=[peer_pb2.PeerMessage(
                        error=peer_pb2.Error(channel_id=n.to_bytes(4, "big"),
                                             data=b"x" * frame_bytes))]))
                    sent += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                full = await hub_link.wait_until(lambda s: s.incoming_buffered >= window)
                blocked = await link.wait_until(lambda s: s.send_blocked)
                # Everything not yet consumed sits in bounded places: the hub's window,
                # gRPC's HTTP/2 window (at most a few MB), the client's window.
                assert full.incoming_buffered == window
                assert blocked.messages_sent == sent
                in_flight = sent - full.incoming_buffered
                print(f"backpressure: sender stopped after {sent} of {total} frames "
                      f"({sent * frame_bytes / 1e6:.1f} MB) with the reader idle")
                assert sent < total / 4, in_flight
                for n in range(total):
                    frame = await hub_link.receive()
                    assert frame.messages[0].error.channel_id == n.to_bytes(4, "big")
                    assert hub_link.stats().incoming_buffered <= window
            assert sent == total


async def test_many_clients_share_one_thread(tmp_path: Path) -> None:
    """100 clients with open links (the 1,000 are bench/edge_bench.py): the process's
    OS thread count does not grow with the clients."""
    clients = 100
    async with running_hub(tmp_path) as hub:
        hub.service.read_links = False  # the test drives the hub's ends itself
        threads_before = len(os.listdir("/proc/self/task"))
        transports: list[HubTransport] = []
        links: list[Any] = []

        async def join() -> None:
            transport = await hub.connect()
            transports.append(transport)
            links.append(await transport.open_peer_link())

        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(join)
        while len(hub.edge.connected_clients()) < clients:
            await hub.service.link_arrived.wait()
        threads_after = len(os.listdir("/proc/self/task"))
        print(f"{clients} clients: OS threads {threads_before} -> {threads_after}")
        assert threads_after - threads_before < 10
        for link in links:
            await link.send(fee_frame(1))
        for transport in transports:
            hub_link = hub.service.links[transport.node_id]
            assert (await hub_link.receive()).messages[0].update_fee.feerate_per_kw == 1
            await hub_link.send(fee_frame(2))
        for link in links:
            assert (await link.receive()).messages[0].update_fee.feerate_per_kw == 2
        # Figures only (no timing assertion): both ends in this one process.
        rounds = 10
        cpu0, t0 = time.process_time(), time.perf_counter()

        async def ping_pong(link: Any, hub_link: Any) -> None:
            for n in range(rounds):
                await link.send(fee_frame(n))
                await hub_link.send(await hub_link.receive())
                await link.receive()

        async with trio.open_nursery() as nursery:
            for transport, link in zip(transports, links, strict=True):
                nursery.start_soon(ping_pong, link, hub.service.links[transport.node_id])
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        messages = clients * rounds * 2
        print(f"{messages} gRPC messages (hub and clients in one process): "
              f"{messages / elapsed:,.0f}/s, {cpu / messages * 1e6:.0f} us CPU per message "
              "for both ends and both crossings")
        for transport in transports:
            await transport.aclose()


async def test_malformed_frame_ends_the_link_and_delivers_nothing(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, RawConnection(hub) as raw:
        secret = new_node_secret()
        metadata = await raw.login(secret)

        async def send_garbage(channel: Any) -> Any:
            call = channel.stream_stream("/chanhub.client.Hub/PeerLink")(
                None, metadata=metadata)  # raw bytes, no serializer
            await call.write(b"\x0a\xff\xff\xff\xff\x0f")  # a length beyond the message
            return await call.read()

        with pytest.raises(RpcStatusError):
            await raw.run(send_garbage)
        assert pubkey_from_secret(secret) not in hub.service.received
        # The hub still serves this client (and everyone else) normally.
        async with await hub.connect(secret) as transport:
            link = await transport.open_peer_link()
            await link.send(fee_frame(5))
            while not hub.service.received.get(transport.node_id):
                await hub.service.frame_received.wait()


async def test_client_vanishing_closes_the_hub_end(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        transport = await hub.connect()
        await transport.open_peer_link()
        hub_link = await hub_link_of(hub, transport.node_id)
        channel = transport._channel

        async def drop() -> None:
            await channel.close(grace=None)  # cancels the streams, no goodbye

        await hub.bridge.run_in_asyncio(drop)
        with pytest.raises(LinkClosed):
            await hub_link.receive()
        with pytest.raises(LinkClosed):
            await hub_link.send(fee_frame(1))
        assert isinstance(hub_link, BridgedStream)
        await hub_link.wait_closed()
        await transport.aclose()


async def test_transport_authenticates_again_when_its_session_expired(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, await hub.connect() as transport:
        await transport.get_info()
        old_metadata = transport._metadata
        hub.clock[0] += 24 * 3600 + 1
        assert (await transport.get_info()).hub_node_id == hub.hub_node_id
        assert transport._metadata != old_metadata
        # get_info ran once per successful call: the refused attempt ran nothing.
        assert [name for name, _ in hub.service.calls] == ["get_info", "get_info"]
        hub.clock[0] += 24 * 3600 + 1
        link = await transport.open_peer_link()
        await hub_link_of(hub, transport.node_id)
        await link.aclose()


async def test_admin_transport(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        admin = await AdminTransport.connect(
            hub.bridge, hub.target, credential_file=tmp_path / "admin.credential",
            fingerprint=hub.tls.fingerprint_sha256)
        async with admin:
            assert (await admin.call("GetInfo", admin_pb2.GetInfoRequest())).client_count == 7
            policy = await admin.call("SetFeePolicy", admin_pb2.SetFeePolicyRequest(
                fee_policy=client_pb2.FeePolicy(base_fee_msat=5, fee_rate_ppm=7)))
            assert (policy.base_fee_msat, policy.fee_rate_ppm) == (5, 7)
        wrong = tmp_path / "wrong.credential"
        wrong.write_text("00" * 32)
        wrong.chmod(0o600)
        async with await AdminTransport.connect(
                hub.bridge, hub.target, credential_file=wrong,
                cert_pem=hub.tls.cert_pem) as impostor:
            await expect_status(UNAUTHENTICATED,
                                impostor.call("ListClients", admin_pb2.ListClientsRequest()))
        assert hub.admin.calls == ["get_info", "set_fee_policy"]


async def test_a_subscription_ends_when_its_subscriber_leaves(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub, await hub.connect() as transport:
        ended = trio.Event()
        original = hub.service.subscribe_events

        async def tracked(*args: Any) -> None:
            try:
                await original(*args)  # waits for events forever
            finally:
                ended.set()

        hub.service.subscribe_events = tracked  # type: ignore[method-assign,assignment]
        events = await transport.subscribe_events()
        await events.aclose()
        await ended.wait()
