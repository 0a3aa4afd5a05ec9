"""Two channel parties on the real driver, store and peer session (test helper).

A ``Party`` is what a hub or a client assembles: a ``Database``, a ``ChannelStore``
with its ``GroupWriter``, a ``DriverContext`` and one ``PeerSession`` for its peer.
It plays a simple application: as payee it fulfills every HTLC whose preimage it knows
(the shared ``invoices`` dict stands in for invoices); as payer it records outcomes.
``restart()`` throws everything away and rebuilds it from the database alone.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh
from protocol import Channel, LocalConfig
from protocol.actions import (
    ChannelFailed,
    ChannelOpened,
    Event,
    FundingNeeded,
    FundingSigned,
    HtlcFailed,
    HtlcFulfilled,
    HtlcReceived,
    Watch,
)
from protocol.driver.db import Database
from protocol.driver.driver import ChannelDriver, DriverContext
from protocol.driver.link import FrameLink
from protocol.driver.peer import PeerSession
from protocol.driver.store import ChannelStore, new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter
from protocol.table import LinkState
from regtest.twoparty import REGTEST_GENESIS_HASH
from tests.driver.conftest import TEST_PASSPHRASE

EXTRA = Path(__file__).parent / "extra_migrations"
update_log = sa.Table(
    "app_update_log", sa.MetaData(),
    sa.Column("channel_key", sa.LargeBinary(16), primary_key=True),
    sa.Column("update_id", sa.BigInteger, primary_key=True),
)


class LoggedStore(ChannelStore):
    """Every snapshot writes a row of the application's own in the same transaction,
    as the hub's payments and events will."""

    def snapshot_write(self, channel_key: bytes, peer_node_id: bytes, update_id: int,
                       snapshot: dict[str, Any]) -> Callable[[sa.Connection], None]:
        inner = super().snapshot_write(channel_key, peer_node_id, update_id, snapshot)

        def write(conn: sa.Connection) -> None:
            inner(conn)
            conn.execute(update_log.insert().values(channel_key=channel_key,
                                                    update_id=update_id))

        return write


CONFIG = LocalConfig(to_self_delay=6, minimum_depth=1, max_accepted_htlcs=100)


def secret(label: str) -> bytes:
    return hashlib.sha256(f"driver tests: {label}".encode()).digest()


def node_id(name: str) -> bytes:
    return pubkey_from_secret(secret(f"node {name}"))


class RecordingBroadcaster:
    def __init__(self, send: Callable[[bytes], None] | None = None) -> None:
        self.sent: list[tuple[bytes, str]] = []
        self._send = send

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        self.sent.append((txid, reason))
        if self._send is not None:
            self._send(raw_tx)


UNTIL_REAL_SECONDS = 120.0  # a hang fails the test instead of spinning CI forever


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (virtual time, under the autojump clock) until ``predicate()`` holds.

    Under autojump a wait that never ends spins instead of blocking, so a bound in
    real time turns such a bug into a failure naming the predicate."""
    deadline = time.monotonic() + UNTIL_REAL_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {predicate.__code__.co_qualname} "
                                 f"(line {predicate.__code__.co_firstlineno})")
        await trio.sleep(0.01)


@dataclass
class Party:
    name: str
    url: str
    peer_name: str
    invoices: dict[bytes, bytes]  # payment_hash -> preimage (what the payee knows)
    height: Callable[[], int]
    logged: bool = False  # LoggedStore and the test migrations (crash test)
    db: Database = field(init=False)
    store: ChannelStore = field(init=False)
    ctx: DriverContext = field(init=False)
    session: PeerSession = field(init=False)
    broadcaster: RecordingBroadcaster = field(default_factory=RecordingBroadcaster)
    events: list[Event] = field(default_factory=list)
    watches: list[Watch] = field(default_factory=list)
    fulfilled: dict[bytes, bytes] = field(default_factory=dict)
    failed: set[bytes] = field(default_factory=set)
    received_msat: int = 0
    _scope: trio.CancelScope | None = None
    _inner: Any = None
    _stopped: trio.Event | None = None
    _changed: trio.Event = field(default_factory=trio.Event)
    on_funding_needed: Callable[[ChannelDriver, FundingNeeded], None] | None = None

    def __post_init__(self) -> None:
        self._build()

    def _build(self) -> None:
        self.db = Database.open(self.url, version_locations=[EXTRA] if self.logged else [])
        box = open_secret_box(self.db, TEST_PASSPHRASE)
        kind = LoggedStore if self.logged else ChannelStore
        self.store = kind(self.db, box, GroupWriter(self.db.engine))
        self.ctx = DriverContext(self.store, self.broadcaster, self.height, self._on_event,
                                 self._on_watch)
        drivers = [ChannelDriver.restore(stored, self.ctx)
                   for stored in self.store.load_channels(node_id(self.peer_name))]
        self.session = PeerSession(node_id(self.peer_name), drivers, self.ctx,
                                   accept_channel=self._accept)

    @property
    def driver(self) -> ChannelDriver:
        (driver,) = self.session.drivers
        return driver

    # -- the application ----------------------------------------------------------------

    def _accept(self, session: PeerSession, msg: Any) -> ChannelDriver:
        channel = Channel.inbound(config=CONFIG, channel_seed=secret(f"{self.name} seed"),
                                  chain_hash=REGTEST_GENESIS_HASH,
                                  close_script=p2wpkh(node_id(f"{self.name} close")))
        return ChannelDriver(channel, channel_key=new_channel_key(),
                             peer_node_id=session.peer_node_id, ctx=self.ctx)

    def open_outbound(self, funding_sat: int) -> ChannelDriver:
        channel = Channel.outbound(config=CONFIG, channel_seed=secret(f"{self.name} seed"),
                                   temporary_channel_id=secret(f"{self.name} temporary id"),
                                   chain_hash=REGTEST_GENESIS_HASH,
                                   close_script=p2wpkh(node_id(f"{self.name} close")))
        driver = ChannelDriver(channel, channel_key=new_channel_key(),
                               peer_node_id=node_id(self.peer_name), ctx=self.ctx)
        self.session.add_channel(driver)
        driver.open(funding_sat=funding_sat, push_msat=0, feerate_per_kw=2_500)
        return driver

    async def _on_event(self, driver: ChannelDriver, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, HtlcReceived):
            self._settle_received(driver, event.htlc_id, event.amount_msat, event.payment_hash)
        elif isinstance(event, HtlcFulfilled):
            self.fulfilled[event.payment_hash] = event.payment_preimage
        elif isinstance(event, HtlcFailed):
            self.failed.add(event.payment_hash)
        elif isinstance(event, FundingNeeded) and self.on_funding_needed is not None:
            self.on_funding_needed(driver, event)
        self._changed.set()
        self._changed = trio.Event()

    def _settle_received(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                         payment_hash: bytes) -> None:
        # After a restart an HTLC can come twice: from settle_restored once the link is
        # up, and as the HtlcReceived the reestablish replays (the product's client
        # answers it once the same way: client/node.py ``_answering``).
        if all(pending[0] != htlc_id for pending in driver.channel.received_htlcs()):
            return
        preimage = self.invoices.get(payment_hash)
        if preimage is None:
            driver.fail_htlc(htlc_id, b"unknown payment hash")
        else:
            driver.fulfill_htlc(htlc_id, preimage)
            self.received_msat += amount_msat

    def settle_restored(self) -> None:
        """After a restart: settle the peer's committed HTLCs we had not settled yet."""
        for htlc_id, amount_msat, payment_hash, _cltv in self.driver.channel.received_htlcs():
            self._settle_received(self.driver, htlc_id, amount_msat, payment_hash)

    async def _on_watch(self, driver: ChannelDriver, watch: Watch) -> None:
        self.watches.append(watch)

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def pay(self, amount_msat: int, label: str) -> bytes:
        preimage = secret(f"preimage {label}")
        payment_hash = hashlib.sha256(preimage).digest()
        self.invoices[payment_hash] = preimage
        self.driver.add_htlc(amount_msat, payment_hash, self.height() + 40)
        return payment_hash

    # -- life cycle ----------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery, link: FrameLink) -> None:
        """Start the writer and the session on ``link`` in a scope of their own."""
        self._stopped = trio.Event()
        ready = trio.Event()

        async def serve() -> None:
            assert self._stopped is not None
            try:
                with trio.CancelScope() as scope:
                    self._scope = scope
                    async with trio.open_nursery() as inner:
                        self._inner = inner
                        await inner.start(self.store.writer.run)
                        await inner.start(self.session.run, link)
                        ready.set()
            finally:
                self._stopped.set()

        nursery.start_soon(serve)
        await ready.wait()

    async def reconnect(self, link: FrameLink) -> None:
        """A new link (the writer kept running)."""
        await until(lambda: not self.session.connected)
        await self._inner.start(self.session.run, link)

    async def stop(self) -> None:
        """Like a crash: cancel everything, drop every object, close the database."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        await self._stopped.wait()
        self.db.close()

    async def restart(self, nursery: trio.Nursery, link: FrameLink) -> None:
        await self.stop()
        self.events.clear()
        self._build()
        await self.start(nursery, link)

    def link_up(self) -> bool:
        return all(d.channel.link is LinkState.UP for d in self.session.drivers)

    def failed_channels(self) -> list[ChannelFailed]:
        return [e for e in self.events if isinstance(e, ChannelFailed)]


async def open_funded_channel(a: Party, b: Party, node: Any, funding_sat: int) -> None:
    """``a`` funds from the node's wallet (the funding tx goes to the mempool at once:
    the driver is under test here, not the funder's wallet safety), ``b`` accepts."""

    def fund(driver: ChannelDriver, needed: FundingNeeded) -> None:
        txid_hex, vout = node.send_to_script(needed.script_pubkey, needed.amount_sat)
        driver.funding_outpoint(bytes.fromhex(txid_hex)[::-1], vout)

    a.on_funding_needed = fund
    a.open_outbound(funding_sat)
    await a.wait_for(lambda: a.count(FundingSigned) == 1)
    await until(lambda: bool(b.session.drivers) and b.driver.channel.d.funding_txid != b"")
    await b.session.idle()
    node.mine(1)
    a.driver.funding_confirmed()
    b.driver.funding_confirmed()
    await a.wait_for(lambda: a.count(ChannelOpened) == 1)
    await b.wait_for(lambda: b.count(ChannelOpened) == 1)
