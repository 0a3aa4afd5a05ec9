"""HubNode: the hub's business core behind the gRPC edge.

Theory of operation. ``HubNode.open`` opens the store (driver tables plus the
``hub`` alembic branch), the secret box, the node secret (created on first open,
sealed in ``driver_secrets``), the group writer and a ``HubChannelStore``; it
restores every channel into one ``PeerSession`` per client node id. ``run`` starts
the writer and the router, then reconciles every forward against the restored
channel books (``Router.reconcile``) before any link can run, so a restart
finishes what the previous process left in flight.

``on_peer_link`` (the edge calls it per authenticated link) runs the client's
session on that link; ``DriverContext.on_event`` feeds the router (HTLCs) and the
event log (channel life). Client-funded channels are accepted by
``accept_channel`` within the configured limits; the funding outpoint a client
names is checked (script, amount, depth) by ``check_fundings`` against the chain
before ``funding_confirmed()``. With a chain attached (``attach_chain``: the hub's
``ChainServices``, wallet seed derived from the node secret, state bundle in
``hub_settings``), ``protocol.driver.onchain.ChannelsOnChain`` does that instead from
the tracker, funds the channels the hub opens (``RequestInbound``, hub/inbound.py)
from the hub's wallet, and sweeps ``to_local`` after the hub's force close; close
scripts are then wallet addresses. ``HubNode`` is the edge's ``HubService``;
``node.admin`` (``AdminApi`` below) its
``AdminService``. Unix times come from ``now_unix`` (a clock read is the caller's).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from channel.chain.rpc import BitcoinRpc
from channel.chain.services import ChainServices
from channel.commitment import Side
from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh
from channel.watch import ChannelClosedOnChain, ClaimBuried, PreimageLearned
from hub import ledger
from hub.admin import AdminApi
from hub.config import HubConfig
from hub.edge import EventSender, FailedPrecondition, NotFound, PermissionDeniedError
from hub.events import EventLog
from hub.inbound import InboundOrders
from hub.ledger import HubChannelStore
from hub.policy import FeePolicy
from hub.router import Router, payment_proto
from proto import client_pb2, peer_pb2
from protocol import Channel, LocalConfig
from protocol.actions import (
    ChannelClosed,
    ChannelFailed,
    ChannelOpened,
    Event,
    HtlcFulfilled,
    Watch,
)
from protocol.driver.crypto import KeySource
from protocol.driver.db import Database
from protocol.driver.driver import Broadcaster, ChannelDriver, DriverContext
from protocol.driver.link import FrameLink, LinkClosed
from protocol.driver.onchain import ChannelsOnChain
from protocol.driver.peer import PeerSession
from protocol.driver.store import new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter
from protocol.errors import LocalProtocolError
from protocol.table import ENDED_STATES, ChannelState, LinkState

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
NODE_SEED = "hub_node_seed"
CHAIN_STATE = "chain_state"  # hub_settings row: the ChainServices bundle (JSON)
REGTEST_GENESIS_HASH = bytes.fromhex(
    "06226e46111a0b59caaf126043eb5bbf28c34f3a5e332a1fc7b2b73cf188910f")
VERSION = "0.1.0"


@dataclass(frozen=True)
class HubSettings:
    store_url: str
    key_source: KeySource
    lock_name: str = "hub"
    fee_base_msat: int = 1000
    fee_ppm: int = 1
    cltv_expiry_delta_blocks: int = 40
    minimum_depth: int = 3
    min_channel_size_sat: int = 20_000
    max_channel_size_sat: int = 16_777_215
    max_inbound_sat: int = 1_000_000
    max_inbound_total_sat: int = 50_000_000
    min_htlc_msat: int = 1
    max_htlc_msat: int = 5_000_000_000
    max_accepted_htlcs: int = 483
    max_channels_per_client: int = 5
    to_self_delay_blocks: int = 144
    chain: str = "regtest"
    chain_hash: bytes = REGTEST_GENESIS_HASH

    @classmethod
    def from_config(cls, config: HubConfig, key_source: KeySource) -> HubSettings:
        return cls(store_url=config.effective_store_url, key_source=key_source,
                   fee_base_msat=config.fee_base_msat, fee_ppm=config.fee_ppm,
                   cltv_expiry_delta_blocks=config.cltv_expiry_delta_blocks,
                   minimum_depth=config.minimum_depth,
                   min_channel_size_sat=config.min_channel_size_sat,
                   max_channel_size_sat=config.max_channel_size_sat,
                   max_inbound_sat=config.max_inbound_sat,
                   max_inbound_total_sat=config.max_inbound_total_sat,
                   min_htlc_msat=config.min_htlc_msat, max_htlc_msat=config.max_htlc_msat,
                   max_accepted_htlcs=config.max_accepted_htlcs,
                   max_channels_per_client=config.max_channels_per_client)

    def local_config(self) -> LocalConfig:
        return LocalConfig(to_self_delay=self.to_self_delay_blocks,
                           minimum_depth=self.minimum_depth,
                           max_accepted_htlcs=min(self.max_accepted_htlcs, 483),
                           htlc_minimum_msat=self.min_htlc_msat,
                           min_funding_sat=self.min_channel_size_sat)


# Closed on chain: nothing settles off chain any more (the watch does it all).
_OFF_CHAIN_ENDED = (ChannelState.ON_CHAIN, ChannelState.RESOLVED)

# gettxout as bitcoind answers it (None: spent or unknown), for check_fundings.
TxOutLookup = Callable[[str, int], Awaitable[dict[str, Any] | None]]

_CHANNEL_STATES = {
    ChannelState.NORMAL: client_pb2.CHANNEL_STATE_OPEN,
    ChannelState.SHUTDOWN: client_pb2.CHANNEL_STATE_CLOSING,
    ChannelState.NEGOTIATING: client_pb2.CHANNEL_STATE_CLOSING,
    ChannelState.CLOSED: client_pb2.CHANNEL_STATE_CLOSED,
    ChannelState.FAILED: client_pb2.CHANNEL_STATE_FORCE_CLOSING,
    # Closed on chain, outputs being claimed: closing; every one settled: closed.
    ChannelState.ON_CHAIN: client_pb2.CHANNEL_STATE_FORCE_CLOSING,
    ChannelState.RESOLVED: client_pb2.CHANNEL_STATE_CLOSED,
}


class HubNode:
    """See the module docstring. Satisfies ``hub.edge.HubService``."""

    def __init__(self, settings: HubSettings, db: Database, store: HubChannelStore,
                 node_secret: bytes, *, height: Callable[[], int], broadcaster: Broadcaster,
                 now_unix: Callable[[], int]) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.writer = store.writer
        self.node_secret = node_secret
        self.hub_node_id = pubkey_from_secret(node_secret)
        self._given_height = height
        self.chain: ChainServices | None = None
        self.onchain: ChannelsOnChain | None = None
        self.now_unix = now_unix
        self.ctx = DriverContext(store, broadcaster, self.height, self._on_event,
                                 self._on_watch)
        self.events = EventLog(db, now_unix)
        self.sessions: dict[bytes, PeerSession] = {}
        self.drivers: dict[bytes, ChannelDriver] = {}
        self.funding_watches: dict[bytes, Watch] = {}  # channel_key -> Watch("funding")
        self.fee_policy = db.read_sync(ledger.load_fee_policy) or FeePolicy(
            settings.fee_base_msat, settings.fee_ppm)
        self.router = Router(store=store, events=self.events, node_secret=node_secret,
                             hub_node_id=self.hub_node_id, sessions=self.sessions,
                             drivers=self.drivers, fee_policy=lambda: self.fee_policy,
                             cltv_expiry_delta_blocks=settings.cltv_expiry_delta_blocks,
                             min_htlc_msat=settings.min_htlc_msat, height=self.height,
                             now_unix=now_unix, preimage_to_chain=self._preimage_to_watch)
        for stored in store.load_channels():
            self._add_driver(ChannelDriver.restore(stored, self.ctx))
        for watch in store.load_watches():
            if watch.kind == "funding":
                driver = self.drivers.get(watch.channel_key)
                if driver is not None and driver.channel.state is ChannelState.AWAIT_CHANNEL_READY:
                    self.funding_watches[watch.channel_key] = Watch.from_record(watch.record)
        self.inbound = InboundOrders(self, now_unix)
        self.admin = AdminApi(self)

    @classmethod
    def open(cls, settings: HubSettings, *, height: Callable[[], int],
             broadcaster: Broadcaster, now_unix: Callable[[], int] | None = None) -> HubNode:
        db = Database.open(settings.store_url, lock_name=settings.lock_name,
                           version_locations=[MIGRATIONS])
        try:
            box = open_secret_box(db, settings.key_source)
            store = HubChannelStore(db, box, GroupWriter(db.engine))
            secret = store.load_secret(NODE_SEED)
            if secret is None:
                secret = secrets.token_bytes(32)
                with db.engine.begin() as conn:  # before the writer runs: written directly
                    store.secret_write(NODE_SEED, secret)(conn)
            return cls(settings, db, store, secret, height=height, broadcaster=broadcaster,
                       now_unix=now_unix or (lambda: int(time.time())))
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def height(self) -> int:
        """The chain height: the follower's tip once a chain is attached."""
        return self.chain.tip.height if self.chain is not None else self._given_height()

    # -- the chain ----------------------------------------------------------------------

    async def attach_chain(self, rpc: BitcoinRpc, *, poll_interval_s: float = 1.0,
                           birth_height: int | None = None) -> ChainServices:
        """Open the hub's chain services from the stored bundle (fresh on first use);
        call before ``run``. The wallet then funds inbound channels, the broadcaster
        sends what the channels broadcast, and the tracker confirms fundings."""
        value = self.db.read_sync(lambda conn: conn.execute(
            sa.select(ledger.settings.c.value).where(ledger.settings.c.name == CHAIN_STATE)
        ).scalar_one_or_none())
        state = json.loads(value) if value is not None else None
        seed = hmac.new(self.node_secret, b"chanhub hub onchain wallet", "sha256").digest()
        chain = await ChainServices.open(rpc, seed, state=state, birth_height=birth_height,
                                         min_depth=1, persist=self._persist_chain,
                                         poll_interval_s=poll_interval_s)
        self.chain = chain
        self.ctx.broadcaster = chain.broadcaster.for_driver()
        self.onchain = ChannelsOnChain(
            chain, lambda: list(self.drivers.values()), self._persist_chain,
            funding_depth=lambda d: self.inbound.funding_depth(d) or self.settings.minimum_depth,
            settle=self.settle_offline, on_preimage=self._preimage_on_chain,
            on_report=self._chain_report)
        if state is None:
            with self.db.engine.begin() as conn:  # before the writer runs: written directly
                _settings_write(CHAIN_STATE, json.dumps(chain.to_json()))(conn)
        return chain

    async def settle_offline(self, driver: ChannelDriver) -> None:
        """Run what is queued on ``driver`` now if its client is not connected (a force
        close must reach the chain without waiting for the client)."""
        session = self.sessions.get(driver.peer_node_id)
        if session is not None and not session.connected:
            await session.idle()

    async def _preimage_on_chain(self, driver: ChannelDriver, event: PreimageLearned) -> None:
        """The client claimed an HTLC we offered on chain with its preimage: the router
        settles the upstream HTLC as if the client had fulfilled it off chain."""
        for htlc in list(driver.channel.d.book.htlcs.values()):
            if htlc.offered_by is Side.LOCAL and htlc.payment_hash == event.payment_hash:
                self.router.on_event(driver, HtlcFulfilled(
                    htlc.htlc_id, htlc.payment_hash, event.payment_preimage))

    def _preimage_to_watch(self, driver: ChannelDriver, preimage: bytes) -> None:
        """A preimage the channel cannot take off chain (it is on chain, or failed):
        its watch claims the client's HTLC with it on chain, from the next block (the
        preimage is in the forward record first; ``_feed_watches`` gives it again after
        a restart)."""
        if self.onchain is not None:
            self.onchain.enforcer.add_preimage(driver, preimage)

    async def _feed_watches(self) -> None:
        """After a restart, before the follower runs: every preimage stored for an HTLC
        still open on a channel that cannot settle off chain goes to its watch; every
        outgoing HTLC whose timeout claim is buried (``ClaimBuried``, reported before
        the restart, perhaps with its fail-back not yet stored) is failed back."""
        assert self.onchain is not None
        enforcer = self.onchain.enforcer
        enforcer.refresh()
        for driver in list(self.drivers.values()):
            watch = enforcer.watch_of(driver)
            if watch is None:
                continue
            for event in list(watch.reported.values()):
                if isinstance(event, ClaimBuried):
                    self._buried(driver, event)
            off_chain_ended = driver.channel.state in (*_OFF_CHAIN_ENDED, ChannelState.FAILED)
            if (off_chain_ended or watch.closed_on_chain() is not None) and \
                    driver.channel.received_htlcs():
                key = driver.channel_key

                def read(conn: sa.Connection, key: bytes = key
                         ) -> dict[int, ledger.ForwardRecord]:
                    return ledger.load_forwards_for_incoming(conn, key)

                for record in (await self.db.read(read)).values():
                    if record.state == ledger.SUCCEEDED and record.payment_preimage:
                        watch.add_preimage(record.payment_preimage)

    def _buried(self, driver: ChannelDriver, event: ClaimBuried) -> None:
        if event.label.startswith("htlc_timeout "):
            self.router.outgoing_timed_out_on_chain(driver, int(event.label.split()[1]))

    async def _chain_report(self, driver: ChannelDriver, event: object) -> None:
        """A unilateral close confirmed: the client's event log says so. An outgoing
        HTLC timed out on chain and the claim is buried (``ANTI_REORG_DELAY`` deep: a
        shallower reorg could still let the payee claim it with the preimage): its
        upstream HTLC is failed back off chain."""
        if isinstance(event, ClaimBuried):
            self._buried(driver, event)
        if isinstance(event, ChannelClosedOnChain) and event.kind != "cooperative":
            body = client_pb2.Event(channel_closed=client_pb2.ChannelChanged(
                channel=self.channel_proto(driver)))
            await self.writer.write(self.events.append_fn(driver.peer_node_id, [body]))
            self.events.notify(driver.peer_node_id)

    async def _persist_chain(self, bundle: dict[str, Any]) -> None:
        await self.writer.write(_settings_write(CHAIN_STATE, json.dumps(bundle)))

    # -- life cycle -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.writer.run)
            await nursery.start(self.router.run)
            self.router.reconcile(await self.db.read(ledger.load_in_flight))
            if self.chain is not None and self.onchain is not None:
                await self.onchain.restore()  # before the follower replays blocks
                await self._feed_watches()
                await nursery.start(self.chain.run)
                await nursery.start(self.onchain.run)
            await self.inbound.restore()
            task_status.started()
            await trio.sleep_forever()

    async def drain(self) -> None:
        """Finish the resolutions in flight and every queued channel action."""
        await self.router.idle()
        for session in self.sessions.values():
            await session.idle()

    # -- channels ---------------------------------------------------------------------

    def _add_driver(self, driver: ChannelDriver) -> None:
        self.drivers[driver.channel_key] = driver
        session = self._session(driver.peer_node_id)
        if driver not in session.drivers:
            session.add_channel(driver)

    def _session(self, client_node_id: bytes) -> PeerSession:
        session = self.sessions.get(client_node_id)
        if session is None:
            session = PeerSession(client_node_id, [], self.ctx,
                                  accept_channel=self._accept_channel)
            self.sessions[client_node_id] = session
        return session

    def _channel_seed(self, channel_key: bytes) -> bytes:
        return hmac.new(self.node_secret, b"channel seed" + channel_key, "sha256").digest()

    def _close_script(self, channel_key: bytes) -> bytes:
        """A fresh wallet address once a chain is attached (the wallet then sees a
        cooperative close by itself), else a key derived from the node secret."""
        if self.chain is not None:
            return self.chain.wallet.new_script_pubkey()
        key = hmac.new(self.node_secret, b"close key" + channel_key, "sha256").digest()
        return p2wpkh(pubkey_from_secret(key))

    def _accept_channel(self, session: PeerSession, msg: peer_pb2.OpenChannel
                        ) -> ChannelDriver | None:
        s = self.settings
        open_count = sum(d.channel.state not in ENDED_STATES for d in session.drivers)
        if bytes(msg.chain_hash) != s.chain_hash:
            log.info("open_channel from %s refused: another chain", session.peer_node_id.hex())
            return None
        if not s.min_channel_size_sat <= msg.funding_satoshis <= s.max_channel_size_sat:
            log.info("open_channel refused: %d sat outside [%d, %d]", msg.funding_satoshis,
                     s.min_channel_size_sat, s.max_channel_size_sat)
            return None
        if open_count >= s.max_channels_per_client:
            log.info("open_channel refused: %s has %d channels", session.peer_node_id.hex(),
                     open_count)
            return None
        channel_key = new_channel_key()
        channel = Channel.inbound(config=s.local_config(),
                                  channel_seed=self._channel_seed(channel_key),
                                  chain_hash=s.chain_hash,
                                  close_script=self._close_script(channel_key))
        driver = ChannelDriver(channel, channel_key=channel_key,
                               peer_node_id=session.peer_node_id, ctx=self.ctx)
        self.drivers[channel_key] = driver
        return driver

    def new_outbound_channel(self, client_node_id: bytes) -> ChannelDriver:
        """A channel the hub funds toward a client (not started: ``start_outbound``)."""
        s = self.settings
        channel_key = new_channel_key()
        channel = Channel.outbound(config=s.local_config(),
                                   channel_seed=self._channel_seed(channel_key),
                                   temporary_channel_id=secrets.token_bytes(32),
                                   chain_hash=s.chain_hash,
                                   close_script=self._close_script(channel_key))
        return ChannelDriver(channel, channel_key=channel_key, peer_node_id=client_node_id,
                             ctx=self.ctx)

    def start_outbound_channel(self, driver: ChannelDriver, *, funding_sat: int,
                               feerate_per_kw: int) -> None:
        """Send open_channel; the wallet funds it on FundingNeeded (onchain.fund)."""
        self._add_driver(driver)
        driver.open(funding_sat=funding_sat, push_msat=0, feerate_per_kw=feerate_per_kw)

    async def _on_watch(self, driver: ChannelDriver, watch: Watch) -> None:
        if self.onchain is not None:
            await self.onchain.on_watch(driver, watch)
        elif watch.kind == "funding":
            self.funding_watches[driver.channel_key] = watch

    async def check_fundings(self, gettxout: TxOutLookup) -> int:
        """Confirm each awaited funding output that exists with exactly the agreed
        script and amount at ``minimum_depth``; returns how many were confirmed. A
        mismatching output is never confirmed (the channel stays unusable)."""
        confirmed = 0
        for channel_key, watch in list(self.funding_watches.items()):
            driver = self.drivers.get(channel_key)
            if driver is None or driver.channel.state is not ChannelState.AWAIT_CHANNEL_READY:
                self.funding_watches.pop(channel_key, None)
                continue
            out = await gettxout(watch.txid[::-1].hex(), int(watch.output_index or 0))
            if out is None:
                continue
            script = bytes.fromhex(out["scriptPubKey"]["hex"])
            amount_sat = int(Decimal(str(out["value"])) * 100_000_000)
            if script != watch.script_pubkey or amount_sat != watch.amount_sat:
                log.warning("channel %s: funding output pays %d sat to another script: "
                            "not confirmed", driver.channel_id.hex(), amount_sat)
                continue
            if int(out.get("confirmations", 0)) < self.settings.minimum_depth:
                continue
            del self.funding_watches[channel_key]
            driver.funding_confirmed()
            confirmed += 1
        return confirmed

    async def _on_event(self, driver: ChannelDriver, event: Event) -> None:
        if self.onchain is not None:
            await self.onchain.on_event(driver, event)
        await self.inbound.on_event(driver, event)
        self.router.on_event(driver, event)
        body: client_pb2.Event | None = None
        if isinstance(event, ChannelOpened):
            body = client_pb2.Event(channel_opened=client_pb2.ChannelChanged(
                channel=self.channel_proto(driver)))
        elif isinstance(event, ChannelFailed):
            body = client_pb2.Event(channel_closing=client_pb2.ChannelChanged(
                channel=self.channel_proto(driver)))
        elif isinstance(event, ChannelClosed):
            body = client_pb2.Event(channel_closed=client_pb2.ChannelChanged(
                channel=self.channel_proto(driver)))
        if body is not None:
            client = driver.peer_node_id
            await self.writer.write(self.events.append_fn(client, [body]))
            self.events.notify(client)

    def channel_proto(self, driver: ChannelDriver) -> client_pb2.Channel:
        channel = driver.channel
        d = channel.d
        view = channel.latest_view(Side.LOCAL) if d.remote is not None else None
        pending = len(view.htlcs) if view is not None else 0
        state = _CHANNEL_STATES.get(d.state, client_pb2.CHANNEL_STATE_PENDING_OPEN)
        return client_pb2.Channel(
            channel_id=driver.channel_id, funding_txid=d.funding_txid,
            funding_output_index=d.funding_output_index, client_node_id=driver.peer_node_id,
            capacity_sat=d.funding_sat,
            local_balance_msat=view.remote_msat if view is not None else 0,
            remote_balance_msat=view.local_msat if view is not None else 0,
            pending_htlc_count=pending, state=state, client_funded=not d.local_is_funder,
            to_self_delay=d.remote.to_self_delay if d.remote is not None else 0,
            closing_txid=d.closing_txid)

    def _client_driver(self, client_node_id: bytes, channel_id: bytes) -> ChannelDriver:
        for driver in self.drivers.values():
            if driver.channel_id == channel_id:
                if driver.peer_node_id != client_node_id:
                    raise PermissionDeniedError("that channel is not yours")
                return driver
        raise NotFound(f"no channel {channel_id.hex()}")

    # -- HubService -------------------------------------------------------------------

    async def on_peer_link(self, client_node_id: bytes, link: FrameLink) -> None:
        await self.writer.write(ledger.touch_client(client_node_id, self.now_unix()))
        session = self._session(client_node_id)
        # What the client offered before a restart (or a disconnect) and is not settled:
        # settled once its channel is reestablished (commands wait for the link).
        unsettled: dict[bytes, dict[int, ledger.ForwardRecord]] = {}
        for driver in session.drivers:
            if driver.channel.received_htlcs():
                key = driver.channel_key

                def read(conn: sa.Connection, key: bytes = key
                         ) -> dict[int, ledger.ForwardRecord]:
                    return ledger.load_forwards_for_incoming(conn, key)

                unsettled[key] = await self.db.read(read)

        def after_frame() -> None:
            for key in [k for k in unsettled if self.drivers[k].channel.link is LinkState.UP]:
                self.router.settle_received(self.drivers[key], unsettled.pop(key))
            if self.router.deferred:
                for driver in session.drivers:
                    if driver.channel_key in self.router.deferred:
                        self.router.retry_deferred(driver)
            if self.router.settling:
                for driver in session.drivers:
                    self.router.forget_settled(driver)
            self.router.retry_parked(client_node_id)  # its frame may be the awaited ack

        try:
            await session.run(_WatchedLink(link, after_frame))
        finally:
            self.router.retry_parked(client_node_id)  # offline now: refused, in order

    async def get_info(self, client_node_id: bytes) -> client_pb2.GetInfoResponse:
        session = self.sessions.get(client_node_id)
        return self._info(peer_link_open=session is not None and session.connected)

    def _info(self, *, peer_link_open: bool = False) -> client_pb2.GetInfoResponse:
        s = self.settings
        return client_pb2.GetInfoResponse(
            hub_node_id=self.hub_node_id, version=VERSION, chain=s.chain,
            chain_hash=s.chain_hash, block_height=self.height(),
            fee_policy=client_pb2.FeePolicy(base_fee_msat=self.fee_policy.base_msat,
                                            fee_rate_ppm=self.fee_policy.fee_ppm),
            cltv_expiry_delta=s.cltv_expiry_delta_blocks, minimum_depth=s.minimum_depth,
            limits=client_pb2.Limits(
                min_channel_size_sat=s.min_channel_size_sat,
                max_channel_size_sat=s.max_channel_size_sat, max_inbound_sat=s.max_inbound_sat,
                min_htlc_msat=s.min_htlc_msat, max_htlc_msat=s.max_htlc_msat,
                max_accepted_htlcs=s.max_accepted_htlcs,
                max_channels_per_client=s.max_channels_per_client),
            peer_link_open=peer_link_open)

    async def request_inbound(self, client_node_id: bytes,
                              request: client_pb2.RequestInboundRequest
                              ) -> client_pb2.InboundOrder:
        return await self.inbound.request(client_node_id, request)

    async def get_inbound_order(self, client_node_id: bytes,
                                request: client_pb2.GetInboundOrderRequest
                                ) -> client_pb2.InboundOrder:
        return await self.inbound.get(client_node_id, request.order_id)

    async def list_channels(self, client_node_id: bytes,
                            request: client_pb2.ListChannelsRequest
                            ) -> client_pb2.ListChannelsResponse:
        return self._channels(client_node_id, request)

    def _channels(self, client_node_id: bytes | None, request: client_pb2.ListChannelsRequest
                  ) -> client_pb2.ListChannelsResponse:
        wanted = set(request.states)
        out = [self.channel_proto(d) for d in self.drivers.values()
               if client_node_id is None or d.peer_node_id == client_node_id]
        return client_pb2.ListChannelsResponse(
            channels=[c for c in out if not wanted or c.state in wanted])

    async def list_payments(self, client_node_id: bytes,
                            request: client_pb2.ListPaymentsRequest
                            ) -> client_pb2.ListPaymentsResponse:
        records, cursor = await self._page(client_node_id, request)
        return client_pb2.ListPaymentsResponse(
            payments=[payment_proto(r, client_node_id) for r in records], next_cursor=cursor)

    async def _page(self, client_node_id: bytes | None, request: client_pb2.ListPaymentsRequest
                    ) -> tuple[list[ledger.ForwardRecord], str]:
        direction = {client_pb2.PAYMENT_DIRECTION_SENT: "sent",
                     client_pb2.PAYMENT_DIRECTION_RECEIVED: "received"}.get(request.direction)
        states = tuple({client_pb2.PAYMENT_STATE_IN_FLIGHT: ledger.IN_FLIGHT,
                        client_pb2.PAYMENT_STATE_SUCCEEDED: ledger.SUCCEEDED,
                        client_pb2.PAYMENT_STATE_FAILED: ledger.FAILED}[s]
                       for s in request.states if s)
        after = None
        if request.cursor:
            created, _, payment_id = request.cursor.partition(":")
            after = (int(created), payment_id)
        limit = min(request.limit or 100, 1000)
        records = await self.db.read(lambda conn: ledger.list_forwards(
            conn, client_node_id=client_node_id, direction=direction, states=states,
            after_payment=after, limit=limit))
        cursor = (f"{records[-1].created_at_unix}:{records[-1].payment_id}"
                  if len(records) == limit else "")
        return records, cursor

    async def subscribe_events(self, client_node_id: bytes,
                               request: client_pb2.SubscribeEventsRequest,
                               events: EventSender) -> None:
        try:
            await self.events.subscribe(client_node_id, request.after_sequence, events)
        except LinkClosed:
            return

    # -- operations shared with Admin --------------------------------------------------

    def close_channel(self, driver: ChannelDriver, force: bool) -> client_pb2.CloseChannelResponse:
        try:
            if force:
                driver.fail("force close requested")
            else:
                driver.shutdown()
        except LocalProtocolError as exc:
            raise FailedPrecondition(f"cannot close: {exc.message}") from None
        return client_pb2.CloseChannelResponse(
            state=(client_pb2.CHANNEL_STATE_FORCE_CLOSING if force
                   else client_pb2.CHANNEL_STATE_CLOSING),
            closing_txid=driver.channel.d.closing_txid)


class _WatchedLink:
    """The client's link as its session sees it, calling ``after_frame`` each time the
    session asks for the next frame, i.e. once the previous one was applied (a
    ``channel_reestablish`` that brought a channel's link up, for instance)."""

    def __init__(self, inner: FrameLink, after_frame: Callable[[], None]) -> None:
        self.inner = inner
        self.after_frame = after_frame

    async def send(self, frame: peer_pb2.PeerFrame) -> None:
        await self.inner.send(frame)

    async def receive(self) -> peer_pb2.PeerFrame:
        self.after_frame()
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _settings_write(name: str, value: str) -> ledger.WriteFn:
    """Upsert one ``hub_settings`` row (as ``ledger.set_fee_policy`` does for its own)."""
    def write(conn: sa.Connection) -> None:
        table = ledger.settings
        if not conn.execute(table.update().where(table.c.name == name)
                            .values(value=value)).rowcount:
            conn.execute(table.insert().values(name=name, value=value))

    return write
