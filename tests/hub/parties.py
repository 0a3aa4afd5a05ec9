"""A hub (HubNode on a real store) and client parties built from protocol/driver pieces
over memory links (test helper; the SDK is built elsewhere).

A ``Client`` is a full channel party: its own store, its own ``PeerSession`` toward
the hub, the real packet format. As payee it opens every packet with its node secret
and fulfills when the payment secret and amount match what it issued, else fails
with a signed PAYEE failure; as payer it records the preimage or the decoded,
authenticated ``FailureReport``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from channel.commitment import Side
from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh
from hub.node import REGTEST_GENESIS_HASH, HubNode, HubSettings
from protocol import Channel, LocalConfig
from protocol.actions import (
    ChannelOpened,
    Event,
    FundingNeeded,
    FundingSigned,
    HtlcFailed,
    HtlcFulfilled,
    HtlcReceived,
    PeerWarning,
)
from protocol.driver.db import Database, sqlite_url
from protocol.driver.driver import ChannelDriver, DriverContext
from protocol.driver.link import memory_link_pair
from protocol.driver.peer import PeerSession
from protocol.driver.store import ChannelStore, new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter
from protocol.errors import LocalProtocolError
from protocol.routing import (
    Failure,
    FailureCode,
    FailureOrigin,
    FailureReport,
    PayeePayload,
    RoutingFormatError,
    build_packet,
    decode_failure,
    encode_failure,
    open_payee_payload,
    route_terms,
)
from protocol.table import LinkState
from tests.driver.conftest import TEST_PASSPHRASE

CLIENT_CONFIG = LocalConfig(to_self_delay=6, minimum_depth=1, max_accepted_htlcs=200)


def secret(label: str) -> bytes:
    return hashlib.sha256(f"hub tests: {label}".encode()).digest()


class NullBroadcaster:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str]] = []

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        self.sent.append((txid, reason))


def hub_settings(url: str, **overrides: Any) -> HubSettings:
    values: dict[str, Any] = dict(store_url=url, key_source=TEST_PASSPHRASE,
                                  fee_base_msat=1_000, fee_ppm=1_000, minimum_depth=1,
                                  to_self_delay_blocks=6)
    values.update(overrides)
    return HubSettings(**values)


@dataclass
class Client:
    name: str
    url: str
    hub_node_id: bytes
    height: Callable[[], int]
    fee_base_msat: int = 1_000
    fee_ppm: int = 1_000
    cltv_delta: int = 40
    node_secret: bytes = field(init=False)
    node_id: bytes = field(init=False)
    events: list[Event] = field(default_factory=list)
    issued: dict[bytes, tuple[bytes, bytes, int]] = field(default_factory=dict)
    packets: dict[bytes, bytes] = field(default_factory=dict)
    outcomes: dict[bytes, bytes | FailureReport] = field(default_factory=dict)
    received_msat: int = 0
    online_payee: bool = True  # False: sits on received HTLCs (a payee that holds)
    _changed: trio.Event = field(default_factory=trio.Event)
    _attempt: int = 0

    def __post_init__(self) -> None:
        self.node_secret = secret(f"node {self.name}")
        self.node_id = pubkey_from_secret(self.node_secret)
        self.db = Database.open(self.url, lock_name=f"client-{self.name}")
        box = open_secret_box(self.db, TEST_PASSPHRASE)
        self.store = ChannelStore(self.db, box, GroupWriter(self.db.engine))
        self.ctx = DriverContext(self.store, NullBroadcaster(), self.height, self._on_event,
                                 self._on_watch)
        drivers = [ChannelDriver.restore(s, self.ctx) for s in self.store.load_channels()]
        self.session = PeerSession(self.hub_node_id, drivers, self.ctx,
                                   accept_channel=self._accept)

    @property
    def driver(self) -> ChannelDriver:
        return self.session.drivers[0]

    def balance_msat(self) -> int:
        return int(self.driver.channel.latest_view(Side.LOCAL).local_msat)

    def _accept(self, session: PeerSession, msg: Any) -> ChannelDriver:
        key = new_channel_key()
        channel = Channel.inbound(config=CLIENT_CONFIG,
                                  channel_seed=secret(f"{self.name} {key.hex()}"),
                                  chain_hash=REGTEST_GENESIS_HASH,
                                  close_script=p2wpkh(self.node_id))
        return ChannelDriver(channel, channel_key=key, peer_node_id=self.hub_node_id,
                             ctx=self.ctx)

    def open_outbound(self, funding_sat: int, push_msat: int = 0) -> ChannelDriver:
        key = new_channel_key()
        channel = Channel.outbound(config=CLIENT_CONFIG,
                                   channel_seed=secret(f"{self.name} {key.hex()}"),
                                   temporary_channel_id=secret(f"{self.name} tmp {key.hex()}"),
                                   chain_hash=REGTEST_GENESIS_HASH,
                                   close_script=p2wpkh(self.node_id))
        driver = ChannelDriver(channel, channel_key=key, peer_node_id=self.hub_node_id,
                               ctx=self.ctx)
        self.session.add_channel(driver)
        driver.open(funding_sat=funding_sat, push_msat=push_msat, feerate_per_kw=2_500)
        return driver

    # -- paying and being paid -----------------------------------------------------------

    def invoice(self, amount_msat: int, label: str) -> tuple[bytes, bytes]:
        """(payment_hash, payment_secret) of a new 'invoice' (the record the payee keeps)."""
        preimage = secret(f"{self.name} preimage {label}")
        payment_hash = hashlib.sha256(preimage).digest()
        payment_secret = secret(f"{self.name} payment secret {label}")
        self.issued[payment_hash] = (preimage, payment_secret, amount_msat)
        return payment_hash, payment_secret

    def pay(self, payee: Client, amount_msat: int, label: str, *,
            fee_msat: int | None = None, cltv_shortfall: int = 0) -> bytes:
        payment_hash, payment_secret = payee.invoice(amount_msat, label)
        height = self.height()
        terms = route_terms(amount_msat=amount_msat, min_final_cltv_expiry_blocks=18,
                            height=height, base_msat=self.fee_base_msat,
                            fee_ppm=self.fee_ppm, cltv_expiry_delta_blocks=self.cltv_delta)
        self._attempt += 1
        packet = build_packet(payee_node_id=payee.node_id,
                              amount_to_forward_msat=terms.amount_to_forward_msat,
                              outgoing_cltv_value=terms.outgoing_cltv_value,
                              payment_hash=payment_hash,
                              payload=PayeePayload(amount_msat, payment_secret=payment_secret),
                              ephemeral_secret=secret(f"{self.name} eph {self._attempt}"))
        htlc_msat = (terms.htlc_amount_msat if fee_msat is None
                     else terms.amount_to_forward_msat + fee_msat)
        self.packets[payment_hash] = packet
        self.payee_of[payment_hash] = payee.node_id
        self.driver.add_htlc(htlc_msat, payment_hash, terms.htlc_cltv_expiry - cltv_shortfall,
                             onion_routing_packet=packet)
        return payment_hash

    payee_of: dict[bytes, bytes] = field(default_factory=dict)

    async def _on_event(self, driver: ChannelDriver, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, HtlcReceived) and self.online_payee:
            self._settle(driver, event.htlc_id, event.amount_msat, event.payment_hash,
                         event.onion_routing_packet)
        elif isinstance(event, HtlcFulfilled):
            self.outcomes[event.payment_hash] = bytes(event.payment_preimage)
        elif isinstance(event, HtlcFailed) and event.payment_hash in self.packets:
            try:
                self.outcomes[event.payment_hash] = decode_failure(
                    event.reason, payment_hash=event.payment_hash,
                    onion_routing_packet=self.packets[event.payment_hash],
                    hub_node_id=self.hub_node_id,
                    payee_node_id=self.payee_of[event.payment_hash])
            except RoutingFormatError:
                self.outcomes[event.payment_hash] = FailureReport(
                    FailureOrigin.HUB, Failure(FailureCode.TEMPORARY_FAILURE))
        self._changed.set()
        self._changed = trio.Event()

    def _settle(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                payment_hash: bytes, packet: bytes) -> None:
        issued = self.issued.get(payment_hash)
        try:
            opened = open_payee_payload(packet, payment_hash=payment_hash,
                                        node_secret=self.node_secret)
            ok = (issued is not None and opened.payload.payment_secret == issued[1]
                  and amount_msat == issued[2])
        except RoutingFormatError:
            ok = False
        try:
            if ok and issued is not None:
                driver.fulfill_htlc(htlc_id, issued[0])
                self.received_msat += amount_msat
                return
        except LocalProtocolError:
            return  # settled already (an event replayed after settle_held)
        reason = encode_failure(
            Failure(FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS, htlc_msat=amount_msat,
                    height=self.height()),
            origin=FailureOrigin.PAYEE, payment_hash=payment_hash, onion_routing_packet=packet,
            node_secret=self.node_secret)
        try:
            driver.fail_htlc(htlc_id, reason)
        except LocalProtocolError:
            return

    def settle_held(self) -> None:
        for driver in self.session.drivers:
            for htlc_id, amount_msat, payment_hash, _cltv in driver.channel.received_htlcs():
                htlc = driver.channel.d.book.htlcs[(Side.REMOTE, htlc_id)]
                self._settle(driver, htlc_id, amount_msat, payment_hash, bytes(htlc.onion))

    async def _on_watch(self, driver: ChannelDriver, watch: Any) -> None:
        return None

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


@dataclass
class Net:
    """A hub and its clients on one regtest node, each client on its own link."""

    node: Any
    hub_url: str
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    hub: HubNode = field(init=False)
    clients: dict[str, Client] = field(default_factory=dict)
    _hub_scope: trio.CancelScope | None = None
    _client_scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    _client_links: dict[str, Any] = field(default_factory=dict)
    _hub_stopped: trio.Event | None = None

    def height(self) -> int:
        return int(self.node.call("getblockcount"))

    async def start_hub(self, nursery: trio.Nursery) -> None:
        self.hub = HubNode.open(hub_settings(self.hub_url, **self.settings_overrides),
                                height=self.height, broadcaster=NullBroadcaster())
        self._hub_stopped = trio.Event()

        async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            assert self._hub_stopped is not None
            try:
                with trio.CancelScope() as scope:
                    self._hub_scope = scope
                    await self.hub.run(task_status=task_status)
            finally:
                self._hub_stopped.set()

        await nursery.start(serve)

    async def stop_hub(self) -> None:
        """Like a crash of the hub process: cancel, drop everything, close the store."""
        assert self._hub_scope is not None and self._hub_stopped is not None
        for scope in self._client_scopes.values():
            scope.cancel()  # the links die with the hub process
        self._hub_scope.cancel()
        await self._hub_stopped.wait()
        self.hub.close()

    def add_client(self, name: str, url: str) -> Client:
        client = Client(name, url, self.hub.hub_node_id, self.height)
        self.clients[name] = client
        return client

    async def start_client(self, nursery: trio.Nursery, client: Client, *,
                           writer: bool = True) -> None:
        """Start the client's writer (first time) and connect it to the hub."""
        if writer:
            await nursery.start(client.store.writer.run)
        await self.connect(nursery, client)

    async def connect(self, nursery: trio.Nursery, client: Client) -> None:
        """A new link: the hub's side in a scope of its own (a hub crash cancels it,
        which closes the link as a dying process's socket would); the client's side
        ends by itself when the link closes."""
        hub_end, client_end = memory_link_pair()
        scope = trio.CancelScope()
        self._client_scopes[client.name] = scope
        self._client_links[client.name] = client_end

        async def hub_side() -> None:
            try:
                with scope:
                    await self.hub.on_peer_link(client.node_id, hub_end)
            finally:
                # As the edge does when on_peer_link ends (and a dying process's socket):
                # the link closes, even when the hub died before its session ran.
                with trio.CancelScope(shield=True):
                    await hub_end.aclose()

        nursery.start_soon(hub_side)
        await nursery.start(client.session.run, client_end)

    async def restart_hub(self, nursery: trio.Nursery) -> None:
        """Crash the hub, start a new one on the same store, reconnect every client."""
        await self.stop_hub()
        for client in self.clients.values():
            while client.session.connected:
                await trio.sleep(0.01)
        await self.start_hub(nursery)
        for client in self.clients.values():
            await self.connect(nursery, client)

    async def link_up(self, client: Client) -> None:
        """Wait until the client's channels are reestablished on both sides."""
        hub_session = self.hub.sessions[client.node_id]
        while not all(d.channel.link is LinkState.UP
                      for d in [*client.session.drivers, *hub_session.drivers]):
            if not client.session.connected and not hub_session.connected and any(
                    isinstance(e, PeerWarning) for e in client.events[-3:]):
                raise AssertionError(f"{client.name}'s link was closed by a warning: "
                                     f"{[e for e in client.events if isinstance(e, PeerWarning)]}")
            await trio.sleep(0.01)

    async def disconnect(self, client: Client) -> None:
        """The client goes away (closes its end); both sessions see the link close."""
        await self._client_links[client.name].aclose()
        while client.session.connected or self.hub.sessions[client.node_id].connected:
            await trio.sleep(0.01)

    async def start_alice_and_bob(self, nursery: trio.Nursery, tmp_path: Path, *,
                                  funding_sat: int, bob_push_msat: int
                                  ) -> tuple[Client, Client]:
        """The hub, then Alice (her channel all hers) and Bob (he pushes
        ``bob_push_msat`` to the hub at opening, so it can pay him), each on a SQLite
        store of its own with a ``funding_sat`` channel."""
        await self.start_hub(nursery)
        alice = self.add_client("alice", sqlite_url(tmp_path / "alice.sqlite"))
        bob = self.add_client("bob", sqlite_url(tmp_path / "bob.sqlite"))
        for client, push_msat in ((alice, 0), (bob, bob_push_msat)):
            await self.start_client(nursery, client)
            await self.open_channel(client, funding_sat, push_msat)
        return alice, bob

    async def open_channel(self, client: Client, funding_sat: int, push_msat: int = 0
                           ) -> ChannelDriver:
        """The client funds (from the node's wallet), the hub checks the output at
        depth before confirming."""
        def fund(driver: ChannelDriver, needed: FundingNeeded) -> None:
            txid_hex, vout = self.node.send_to_script(needed.script_pubkey, needed.amount_sat)
            driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

        opened_before = client.count(ChannelOpened)
        original = client._on_event

        async def on_event(driver: ChannelDriver, event: Event) -> None:
            if isinstance(event, FundingNeeded):
                fund(driver, event)
            await original(driver, event)

        client.ctx.on_event = on_event
        driver = client.open_outbound(funding_sat, push_msat)
        await client.wait_for(lambda: client.count(FundingSigned) >= 1
                              and driver.channel.d.funding_txid != b"")
        await self.hub.sessions[client.node_id].idle()
        self.node.mine(self.hub.settings.minimum_depth)
        assert await self.hub.check_fundings(self.gettxout) == 1
        driver.funding_confirmed()
        await client.wait_for(lambda: client.count(ChannelOpened) > opened_before)
        await self.hub.sessions[client.node_id].idle()
        return driver

    async def gettxout(self, txid_hex: str, vout: int) -> dict[str, Any] | None:
        out = self.node.call("gettxout", txid_hex, vout)
        if out is None:
            return None
        out["value"] = Decimal(str(out["value"]))
        return dict(out)
