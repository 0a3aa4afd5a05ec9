"""The client party: its keys, its store, its channels with the hub, its payments.

Theory of operation. A ``ClientNode`` owns one store (``Database.open`` with lock
name "client": a second process gets ``StoreLocked``), whose secret box (passphrase
through scrypt, or a key file) seals the node seed and every channel snapshot. The
node key is derived once from that seed; each channel's seed is derived from the node
seed and the channel's key, so nothing else secret needs storing. Channels are
``protocol.driver`` ``ChannelDriver``s in one ``PeerSession`` toward the hub; any
``FrameLink`` serves it (``serve_link``): the gRPC link from ``client.transport`` in
production, a memory link in tests. Every new link re-establishes every channel.

Payments (tables in ``client.ledger``). ``pay`` checks the idempotency key (an
in-memory index over the table, loaded at start), builds the packet, then in ONE trio
step queues the HTLC on the channel and submits the payment record to the writer:
the record is submitted before the driver's Persist holding the HTLC, so it is
durable no later than that Persist, i.e. before the HTLC can leave. Success and
failure are recorded from the driver's events (``HtlcFulfilled`` stores the preimage;
``HtlcFailed`` the authenticated reason) with the event-log entry in the same
transaction. After a restart, an in-flight payment whose HTLC is in no channel never
left (its Persist never committed) and is failed; the others resolve through the
events reestablish produces.

Receiving: on ``HtlcReceived`` the packet is opened with the node key and checked
(``client.invoices.check_incoming_payment``); an accepted HTLC marks the invoice paid
in memory at once (a second HTLC in the same batch is refused), then the invoice,
the received payment and the event are written in one transaction, and only then is
the preimage released (``fulfill_htlc``). The received payment keeps the payer's node
id as the payer stated it in the packet (every packet this client builds states its
own), so ``refund`` needs no destination; nothing binds that id to the channel the
HTLC came from (docs/payment-format.md). A refused HTLC is failed with a signed
PAYEE failure. An answer the channel refuses (the link dropped while the receipt was
written, or the channel failed meanwhile) is logged, never raised out of the event
handler; the watch gets the preimage (an on-chain claim needs it), and every new link
answers the HTLCs still unanswered once their channel is re-established
(``_settle_held``; an answer while the link is reestablishing is refused), from the
stored receipt when there is one. Refunds reserve the amount against the received
payment in the same transaction that records the refund, with the bound checked in SQL.

The chain (``attach_chain``): a ``channel.chain.ChainServices`` on the client's own
bitcoind (its wallet seed derived from the node seed) gives the height, the
broadcaster and the funding wallet. Its state bundle is written by the store's writer
(meta row ``chain_state``) after every block and after every ``fund()``/watch, before
acting on them. Funding, confirmations and the ``to_local`` sweep after our force
close are ``protocol.driver.onchain.ChannelsOnChain``'s, the code the hub runs too:
the signed funding tx is in the bundle before the outpoint is named, broadcast only on
``FundingSigned``, its coins released if the channel fails first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets as _secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from channel.chain.rpc import BitcoinRpc
from channel.chain.services import ChainServices
from channel.commitment import Side
from channel.keys import pubkey_from_secret
from channel.scripts import p2wpkh
from channel.watch import ChannelClosedOnChain, PreimageLearned
from client import errors, ledger
from client.invoices import (
    Accepted,
    InvoiceRecord,
    check_incoming_payment,
    create_invoice,
    decode_invoice,
)
from client.tower import TowerClient, TowerWatchHook
from protocol import Channel, ChannelState, LinkState, LocalConfig
from protocol.actions import (
    ChannelClosed,
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
from protocol.driver.crypto import KeyFile, Passphrase, secret_aad
from protocol.driver.db import Database
from protocol.driver.driver import Broadcaster, ChannelDriver, DriverContext
from protocol.driver.link import FrameLink
from protocol.driver.onchain import ChannelsOnChain
from protocol.driver.peer import PeerSession
from protocol.driver.store import ChannelStore, new_channel_key, open_secret_box
from protocol.driver.writer import GroupWriter
from protocol.errors import AwaitingAcknowledgement, LocalProtocolError
from protocol.routing import (
    Failure,
    FailureCode,
    FailureOrigin,
    PayeePayload,
    RoutingFormatError,
    build_packet,
    decode_failure,
    encode_failure,
    open_payee_payload,
    route_terms,
)

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
NODE_SEED = "client_node_seed"
CHAIN_STATE = "chain_state"
REGTEST_GENESIS_HASH = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")[::-1]
SPONTANEOUS_FINAL_CLTV_BLOCKS = 18
DEFAULT_CONFIG = LocalConfig(to_self_delay=6, minimum_depth=1, max_accepted_htlcs=200)

Funder = Callable[[ChannelDriver, FundingNeeded], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HubTerms:
    """What the payer needs from the hub's GetInfo."""

    hub_node_id: bytes
    base_fee_msat: int
    fee_ppm: int
    cltv_expiry_delta_blocks: int


@dataclass
class _Pending:
    row: dict[str, Any]
    done: trio.Event = field(default_factory=trio.Event)


def _now() -> int:
    return int(time.time())


class _SwitchBroadcaster:
    """The driver's broadcaster: the chain's once attached, else the one given."""

    def __init__(self, fallback: Broadcaster) -> None:
        self.target = fallback

    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        await self.target.broadcast(raw_tx, txid, reason)


class ClientNode:
    """One client party (see the module docstring). Open with ``open``, run with
    ``await nursery.start(node.run)``, serve links with ``serve_link``."""

    def __init__(self, db: Database, store: ChannelStore, node_seed: bytes, terms: HubTerms, *,
                 height: Callable[[], int] | None = None,
                 broadcaster: Broadcaster | None = None,
                 funder: Funder | None = None, config: LocalConfig = DEFAULT_CONFIG,
                 clock: Callable[[], int] = _now) -> None:
        self.db, self.store, self.terms, self.config = db, store, terms, config
        self._seed = node_seed
        self.node_secret = node_key(node_seed)
        self.node_id = pubkey_from_secret(self.node_secret)
        self._given_height, self.clock, self.funder = height, clock, funder
        self.chain: ChainServices | None = None
        self.onchain: ChannelsOnChain | None = None
        self.tower_hook: TowerWatchHook | None = None  # use_towers
        self._broadcaster = _SwitchBroadcaster(broadcaster or _NoBroadcaster())
        self.ctx = DriverContext(store, self._broadcaster, self.height, self._on_event,
                                 self._on_watch)
        drivers = [ChannelDriver.restore(s, self.ctx) for s in store.load_channels()]
        self.session = PeerSession(terms.hub_node_id, drivers, self.ctx,
                                   accept_channel=self._accept)
        rows = db.read_sync(ledger.all_payments)
        self._payments: dict[str, dict[str, Any]] = {r["payment_id"]: r for r in rows}
        self._by_key = {r["idempotency_key"]: r["payment_id"] for r in rows
                        if r["idempotency_key"]}
        self._sent_by_hash = {r["payment_hash"]: r["payment_id"] for r in rows
                              if r["direction"] == ledger.SENT}
        self._received_by_hash = {r["payment_hash"]: r["payment_id"] for r in rows
                                  if r["direction"] == ledger.RECEIVED}
        self._invoices: dict[bytes, InvoiceRecord] = {}
        for inv in db.read_sync(ledger.all_invoices):
            preimage = store.box.open(inv["preimage_blob"], secret_aad(inv["payment_hash"].hex()))
            record = InvoiceRecord(decode_invoice_unchecked(inv["bolt11"]), preimage,
                                   inv["state"] == "paid")
            self._invoices[inv["payment_hash"]] = record
        self._done: dict[str, trio.Event] = {}
        # (channel_key, htlc_id) of received HTLCs being answered now (_received)
        self._answering: set[tuple[bytes, int]] = set()
        # How long ``ready`` waits for the hub by default. A test under an autojumping
        # MockClock sets it to math.inf: there the clock jumps to the nearest deadline
        # whenever every task waits, a store write on the writer thread included.
        self.ready_timeout_seconds = 30.0
        # How long ``pay`` waits, without a timeout of its own, for the hub to
        # acknowledge the HTLCs before one its fee headroom cannot take yet (the same
        # caveat under autojump); and how many times a payment waited for it.
        self.acknowledgement_wait_seconds = 10.0
        self.acknowledgement_waits = 0
        self.changed = trio.Event()

    @classmethod
    def open(cls, store_url: str, key_source: Passphrase | KeyFile, terms: HubTerms | None,
             **kwargs: Any) -> ClientNode:
        """Open (or create) the client's store. ``terms`` None: the hub's terms saved by
        ``save_hub_terms`` (InvalidRequest if never saved)."""
        with errors.translate():
            db = Database.open(store_url, lock_name="client", version_locations=[MIGRATIONS])
            try:
                box = open_secret_box(db, key_source)
                store = ChannelStore(db, box, GroupWriter(db.engine))
                seed = _node_seed(db, store)
                if terms is None:
                    terms = stored_hub_terms(db)
                return cls(db, store, seed, terms, **kwargs)
            except BaseException:
                db.close()
                raise

    def close(self) -> None:
        self.db.close()

    def height(self) -> int:
        """The chain height: the follower's tip once a chain is attached."""
        if self.chain is not None:
            return self.chain.tip.height
        if self._given_height is None:
            raise errors.InvalidRequest("this client has no chain source")
        return self._given_height()

    async def attach_chain(self, rpc: BitcoinRpc, *, poll_interval_s: float = 1.0,
                           birth_height: int | None = None) -> ChainServices:
        """Open the chain services from the stored bundle (fresh on first use); call
        before ``run``. The wallet then funds channels and the broadcaster sends."""
        value = self.db.read_sync(lambda conn: conn.execute(
            sa.select(ledger.meta.c.value).where(ledger.meta.c.name == CHAIN_STATE)
        ).scalar_one_or_none())
        state = json.loads(value) if value is not None else None
        self.chain = await ChainServices.open(
            rpc, self._wallet_seed(), state=state, birth_height=birth_height,
            min_depth=1, persist=self._persist_chain, poll_interval_s=poll_interval_s)
        self._broadcaster.target = self.chain.broadcaster.for_driver()
        self.onchain = ChannelsOnChain(self.chain, lambda: self.session.drivers,
                                       self._persist_chain, on_change=self._changed,
                                       settle=self._settle_offline,
                                       on_preimage=self._preimage_on_chain,
                                       on_report=self._chain_report)
        if self.funder is None:
            self.funder = self.onchain.fund
        if state is None:
            with self.db.engine.begin() as conn:
                ledger.meta_write(CHAIN_STATE, json.dumps(self.chain.to_json()))(conn)
        return self.chain

    def use_towers(self, towers: Sequence[TowerClient]) -> None:
        """Send an appointment to each of ``towers`` after every revocation (the SDK's
        ``towers=`` option; docs/tower.md). Needs the chain: the penalties pay a wallet
        address at the estimator's rate."""
        if self.chain is None:
            raise errors.InvalidRequest("towers need a chain source (the wallet and fees)")
        self.tower_hook = TowerWatchHook(
            towers, destination_script_pubkey=self.chain.wallet.new_script_pubkey,
            feerate_per_kw=self.chain.fee_estimator.feerate_sat_per_kw)

    async def _preimage_on_chain(self, driver: ChannelDriver, event: PreimageLearned) -> None:
        """The hub claimed an HTLC we offered on chain with its preimage: the payment
        succeeded (the preimage is its proof)."""
        await self._resolve(event.payment_hash, preimage=event.payment_preimage)

    async def _chain_report(self, driver: ChannelDriver, event: object) -> None:
        if isinstance(event, ChannelClosedOnChain) and event.kind != "cooperative":
            await self.store.writer.write(ledger.event_write("channel_closed", None, 0,
                                                             self.clock()))
        self._changed()

    async def _settle_offline(self, driver: ChannelDriver) -> None:
        """Run what is queued now when the hub is not connected (a force close)."""
        if not self.session.connected:
            await self.session.idle()

    def _wallet_seed(self) -> bytes:
        return hmac.new(self._seed, b"chanhub client onchain wallet", "sha256").digest()

    async def _persist_chain(self, bundle: dict[str, Any]) -> None:
        await self.store.writer.write(ledger.meta_write(CHAIN_STATE, json.dumps(bundle)))

    async def save_chain(self) -> None:
        """Persist the chain bundle now (after fund/send/watch, before acting)."""
        if self.chain is not None:
            await self._persist_chain(self.chain.to_json())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer and the chain follower; then reconcile what a crash left in flight."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.store.writer.run)
            if self.chain is not None and self.onchain is not None:
                await self.onchain.restore()  # before the follower replays blocks
                self._feed_watches()
                await nursery.start(self.chain.run)
                await nursery.start(self.onchain.run)
            await self._reconcile()
            task_status.started()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve_link(self, link: FrameLink, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve one link to the hub until it closes (channel_reestablish on start)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.session.run, link)
            nursery.start_soon(self._settle_held, nursery)
            task_status.started()

    # -- channels ---------------------------------------------------------------------------

    def _channel_seed(self, channel_key: bytes) -> bytes:
        return hmac.new(self._seed, b"channel " + channel_key, "sha256").digest()

    def _close_script(self) -> bytes:
        """Where a cooperative close pays us: a fresh wallet address once a chain is
        attached (the wallet finds it within its gap limit even if the key index
        advance is not persisted yet), else the node key's P2WPKH."""
        if self.chain is not None:
            return self.chain.wallet.new_script_pubkey()
        return p2wpkh(self.node_id)

    def _accept(self, session: PeerSession, msg: Any) -> ChannelDriver:
        key = new_channel_key()
        channel = Channel.inbound(config=self.config, channel_seed=self._channel_seed(key),
                                  chain_hash=REGTEST_GENESIS_HASH,
                                  close_script=self._close_script())
        return ChannelDriver(channel, channel_key=key, peer_node_id=self.terms.hub_node_id,
                             ctx=self.ctx)

    def open_channel(self, funding_sat: int, push_msat: int = 0,
                     feerate_per_kw: int = 2_500) -> ChannelDriver:
        """Start a channel we fund; ``funder`` builds the funding transaction."""
        if self.funder is None:
            raise errors.InvalidRequest("this client has no wallet to fund a channel")
        if self.chain is not None and self.onchain is not None and \
                self.funder == self.onchain.fund:
            confirmed_sat = self.chain.wallet.balance().confirmed_sat
            if confirmed_sat < funding_sat:
                raise errors.InsufficientBalance(
                    f"the wallet has {confirmed_sat} sat confirmed, {funding_sat} needed")
        key = new_channel_key()
        channel = Channel.outbound(config=self.config, channel_seed=self._channel_seed(key),
                                   temporary_channel_id=_secrets.token_bytes(32),
                                   chain_hash=REGTEST_GENESIS_HASH,
                                   close_script=self._close_script())
        driver = ChannelDriver(channel, channel_key=key, peer_node_id=self.terms.hub_node_id,
                               ctx=self.ctx)
        self.session.add_channel(driver)
        driver.open(funding_sat=funding_sat, push_msat=push_msat, feerate_per_kw=feerate_per_kw)
        return driver

    def open_drivers(self) -> list[ChannelDriver]:
        return [d for d in self.session.drivers if d.channel.state is ChannelState.NORMAL]

    def channels_up(self) -> bool:
        return all(d.channel.link is LinkState.UP for d in self.open_drivers())

    async def ready(self, timeout_seconds: float | None = None) -> None:
        """Wait until every open channel is re-established with the hub, at most
        ``timeout_seconds`` (``ready_timeout_seconds`` by default). Woken by the peer
        session's changes, never by polling the clock."""
        if timeout_seconds is None:
            timeout_seconds = self.ready_timeout_seconds
        with trio.move_on_after(timeout_seconds) as scope:
            while not (self.session.connected and self.channels_up()):
                await self.session.wait_changed()
        if scope.cancelled_caught:
            raise errors.HubUnavailable("channels not re-established with the hub")

    def balance_msat(self) -> int:
        return sum(int(d.channel.latest_view(Side.LOCAL).local_msat) for d in self.open_drivers())

    # -- invoices ---------------------------------------------------------------------------

    async def add_invoice(self, amount_msat: int | None, description: str = "",
                          expiry_seconds: int = 3600) -> str:
        preimage = _secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).digest()
        with errors.translate():
            invoice = create_invoice(node_secret=self.node_secret, payment_hash=payment_hash,
                                     payment_secret=_secrets.token_bytes(32),
                                     amount_msat=amount_msat, description=description,
                                     now=self.clock(), expiry_seconds=expiry_seconds)
        blob = self.store.box.seal(preimage, secret_aad(payment_hash.hex()))
        await self.store.writer.write(ledger.invoice_insert(dict(
            payment_hash=payment_hash, bolt11=invoice.bolt11, preimage_blob=blob,
            amount_msat=amount_msat, state="open", paid_msat=0, paid_payment_id=None,
            created_unix=invoice.created_at, expires_unix=invoice.expires_at)))
        self._invoices[payment_hash] = InvoiceRecord(invoice, preimage)
        return invoice.bolt11

    # -- paying -----------------------------------------------------------------------------

    async def pay(self, *, idempotency_key: str, bolt11: str | None = None,
                  payee_node_id: bytes | None = None, amount_msat: int | None = None,
                  refund_of: str | None = None, max_fee_msat: int | None = None,
                  timeout_seconds: float | None = None) -> dict[str, Any]:
        """Start a payment; returns its record (in flight, or the earlier one for a key
        already used). ``wait_payment`` waits for the outcome.

        On a channel the hub funded, an HTLC the hub's fee headroom cannot take until it
        acknowledges the ones before it (``AwaitingAcknowledgement``: nothing offered,
        nothing recorded) is offered again after each frame from the hub, for at most
        ``timeout_seconds`` (or ``acknowledgement_wait_seconds``); past it ``HubUnavailable``.
        Every attempt starts from the idempotency check, so a key is still used once."""
        return await self._until_acknowledged(timeout_seconds, lambda: self._pay_once(
            idempotency_key=idempotency_key, bolt11=bolt11, payee_node_id=payee_node_id,
            amount_msat=amount_msat, refund_of=refund_of, max_fee_msat=max_fee_msat,
            timeout_seconds=timeout_seconds))

    async def _until_acknowledged(
            self, timeout_seconds: float | None,
            attempt: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run ``attempt`` again after each change of the session while it raises
        ``AwaitingAcknowledgement`` (``pay``'s docstring)."""
        deadline = trio.current_time() + (timeout_seconds or self.acknowledgement_wait_seconds)
        while True:
            try:
                return await attempt()
            except AwaitingAcknowledgement as exc:
                self.acknowledgement_waits += 1
                if trio.current_time() >= deadline:
                    raise errors.HubUnavailable(
                        f"the hub has not acknowledged the HTLCs in flight: {exc}; retry"
                    ) from exc
                with trio.move_on_at(deadline):
                    await self.session.wait_changed()

    async def _pay_once(self, *, idempotency_key: str, bolt11: str | None = None,
                        payee_node_id: bytes | None = None, amount_msat: int | None = None,
                        refund_of: str | None = None, max_fee_msat: int | None = None,
                        timeout_seconds: float | None = None) -> dict[str, Any]:
        """``pay``, one attempt (its docstring).

        ``max_fee_msat``: refused (``FeeAboveMaximum``) before any HTLC is offered and
        with nothing recorded when the hub's fee for the amount, from its terms, is
        above it (None: no bound). The fee computed here is what the HTLC carries above
        the amount, so the hub can never keep more.
        ``timeout_seconds``: how long to wait for the channel to the hub to be up
        before offering the HTLC (None or 0: not at all); past it ``HubUnavailable``,
        nothing recorded. An HTLC once offered cannot be taken back by the payer: it
        ends when the payee settles or the hub fails it, by its CLTV expiry at worst."""
        if not idempotency_key or len(idempotency_key) > 200:
            raise errors.InvalidRequest("idempotency_key must be 1-200 characters")
        if max_fee_msat is not None and max_fee_msat < 0:
            raise errors.InvalidRequest("max_fee_msat must not be negative")
        if timeout_seconds is not None and timeout_seconds < 0:
            raise errors.InvalidRequest("timeout_seconds must not be negative")
        if timeout_seconds and idempotency_key not in self._by_key:
            await self._wait_until_up(timeout_seconds)
        if idempotency_key in self._by_key:
            earlier = self._payments[self._by_key[idempotency_key]]
            if bolt11 is not None and earlier["bolt11"] != bolt11:
                raise errors.IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for another payment")
            return dict(earlier)
        preimage: bytes | None = None
        if bolt11 is not None:
            with errors.translate():
                invoice = decode_invoice(bolt11, now=self.clock())
            if amount_msat is None:
                amount_msat = invoice.amount_msat
            elif invoice.amount_msat is not None and amount_msat != invoice.amount_msat:
                raise errors.InvalidRequest("amount differs from the invoice's")
            payee, payment_hash = invoice.payee_node_id, invoice.payment_hash
            earlier_id = self._sent_by_hash.get(payment_hash)
            if earlier_id is not None and self._payments[earlier_id]["state"] != ledger.FAILED:
                raise errors.AlreadyPaid(f"invoice already paid (payment {earlier_id})")
            payload = PayeePayload(amount_msat or 0, payment_secret=invoice.payment_secret,
                                   payer_node_id=self.node_id) if amount_msat else None
            final_blocks = invoice.min_final_cltv_expiry_blocks
        else:
            if payee_node_id is None or amount_msat is None:
                raise errors.InvalidRequest("pay needs an invoice, or a node id and an amount")
            payee, preimage = payee_node_id, _secrets.token_bytes(32)
            payment_hash = hashlib.sha256(preimage).digest()
            refund_hash = (self._payments[refund_of]["payment_hash"]
                           if refund_of is not None else None)
            payload = PayeePayload(amount_msat, payment_preimage=preimage,
                                   refund_of_payment_hash=refund_hash,
                                   payer_node_id=self.node_id)
            final_blocks = SPONTANEOUS_FINAL_CLTV_BLOCKS
        if not amount_msat or amount_msat <= 0 or payload is None:
            raise errors.InvalidRequest("amount_msat must be positive")
        terms = route_terms(amount_msat=amount_msat, min_final_cltv_expiry_blocks=final_blocks,
                            height=self.height(), base_msat=self.terms.base_fee_msat,
                            fee_ppm=self.terms.fee_ppm,
                            cltv_expiry_delta_blocks=self.terms.cltv_expiry_delta_blocks)
        if max_fee_msat is not None and terms.fee_msat > max_fee_msat:
            raise errors.FeeAboveMaximum(
                f"the hub's fee for {amount_msat} msat is {terms.fee_msat} msat "
                f"({self.terms.base_fee_msat} msat + {self.terms.fee_ppm} ppm), above the "
                f"maximum of {max_fee_msat} msat", fee_msat=terms.fee_msat,
                max_fee_msat=max_fee_msat)
        try:
            packet = build_packet(payee_node_id=payee, amount_to_forward_msat=amount_msat,
                                  outgoing_cltv_value=terms.outgoing_cltv_value,
                                  payment_hash=payment_hash, payload=payload,
                                  ephemeral_secret=_secrets.token_bytes(32))
        except RoutingFormatError as exc:
            raise errors.InvalidRequest(f"payment: {exc}") from exc
        drivers = sorted(self.open_drivers(), key=lambda d: -int(
            d.channel.latest_view(Side.LOCAL).local_msat))
        if not drivers:
            raise errors.NoChannel("no open channel to the hub")
        if drivers[0].channel.link is not LinkState.UP:
            raise errors.HubUnavailable("the channel is not connected to the hub; retry")
        payment_id = _secrets.token_hex(16)
        row = dict(payment_id=payment_id, direction=ledger.SENT,
                   idempotency_key=idempotency_key, payment_hash=payment_hash,
                   counterparty_node_id=payee, amount_msat=amount_msat,
                   fee_msat=terms.fee_msat, state=ledger.IN_FLIGHT,
                   payment_preimage=None, bolt11=bolt11, packet=packet,
                   channel_key=drivers[0].channel_key, refund_of_payment_id=refund_of,
                   refunded_msat=0, failure_code=0, failure_message="",
                   created_unix=self.clock(), resolved_unix=0, payer_node_id=None)
        # One trio step, no await: the HTLC is queued, and the record is submitted before
        # the driver's Persist of it can be (module docstring).
        try:
            drivers[0].add_htlc(terms.htlc_amount_msat, payment_hash, terms.htlc_cltv_expiry,
                                onion_routing_packet=packet)
        except AwaitingAcknowledgement:
            raise  # pay offers it again once the hub has answered
        except LocalProtocolError as exc:
            raise errors.InsufficientBalance(
                f"cannot send {terms.htlc_amount_msat} msat (amount + fee): {exc}") from exc
        writes = [ledger.payment_insert(row)]
        if refund_of is not None:
            writes.insert(0, ledger.refund_reserve(refund_of, amount_msat))
        pending = self.store.writer.submit(ledger.compose(*writes))
        self._payments[payment_id] = row
        self._by_key[idempotency_key] = payment_id
        self._sent_by_hash[payment_hash] = payment_id
        self._done[payment_id] = trio.Event()
        await pending.wait()
        return dict(row)

    async def _wait_until_up(self, timeout_seconds: float) -> None:
        """Wait at most ``timeout_seconds`` for the link and every open channel to be up
        (``pay`` then refuses what is still down, typed)."""
        with trio.move_on_after(timeout_seconds):
            while not (self.session.connected and self.channels_up()):
                await self.session.wait_changed()

    async def refund(self, payment_id: str, amount_msat: int, *, idempotency_key: str,
                     payer_node_id: bytes | None = None, max_fee_msat: int | None = None,
                     timeout_seconds: float | None = None) -> dict[str, Any]:
        """Send ``amount_msat`` of a received payment back to its payer: to the node id
        the payer stated in its packet, or to ``payer_node_id`` if given (it wins over
        the stated one). ``RefundDestinationUnknown`` when neither is known (a payment
        from an older payer, or received before payers stated it)."""
        return await self._until_acknowledged(timeout_seconds, lambda: self._refund_once(
            payment_id, amount_msat, idempotency_key=idempotency_key,
            payer_node_id=payer_node_id, max_fee_msat=max_fee_msat,
            timeout_seconds=timeout_seconds))

    async def _refund_once(self, payment_id: str, amount_msat: int, *, idempotency_key: str,
                           payer_node_id: bytes | None, max_fee_msat: int | None,
                           timeout_seconds: float | None) -> dict[str, Any]:
        """``refund``, one attempt: the bound is checked again on every attempt."""
        if timeout_seconds and idempotency_key not in self._by_key:
            # here, not in pay: no await may come between the bound check below and the HTLC
            await self._wait_until_up(timeout_seconds)
        original = self._payments.get(payment_id)
        if original is None or original["direction"] != ledger.RECEIVED:
            raise errors.NotFound(f"no received payment {payment_id}")
        if idempotency_key in self._by_key:
            return await self._pay_once(idempotency_key=idempotency_key)
        stated = original.get("payer_node_id")
        destination = payer_node_id if payer_node_id is not None else (
            bytes(stated) if stated is not None else None)
        if destination is None:
            raise errors.RefundDestinationUnknown(
                f"payment {payment_id} does not say who paid it (an older payer): name the "
                f"refund's destination")
        if destination == self.node_id:
            raise errors.InvalidRequest("the refund's destination is this client itself")
        in_flight = sum(p["amount_msat"] for p in self._payments.values()
                        if p["refund_of_payment_id"] == payment_id
                        and p["state"] != ledger.FAILED)
        if amount_msat <= 0 or in_flight + amount_msat > original["amount_msat"]:
            raise errors.RefundExceedsReceived(
                f"refunds would total {in_flight + amount_msat} msat of "
                f"{original['amount_msat']} received")
        return await self._pay_once(idempotency_key=idempotency_key, payee_node_id=destination,
                                    amount_msat=amount_msat, refund_of=payment_id,
                                    max_fee_msat=max_fee_msat)

    async def wait_payment(self, payment_id: str) -> dict[str, Any]:
        row = self._payments[payment_id]
        if row["state"] == ledger.IN_FLIGHT:
            await self._done.setdefault(payment_id, trio.Event()).wait()
        return dict(self._payments[payment_id])

    def payments(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self._payments.values()]

    async def events_after(self, after: int) -> list[ledger.EventRecord]:
        return await self.db.read(lambda conn: ledger.events_after(conn, after))

    # -- driver events ----------------------------------------------------------------------

    async def _on_event(self, driver: ChannelDriver, event: Event) -> None:
        if isinstance(event, FundingNeeded) and self.funder is not None:
            await self.funder(driver, event)
        elif isinstance(event, FundingSigned | ChannelFailed):
            if self.onchain is not None:
                await self.onchain.on_event(driver, event)
        elif isinstance(event, HtlcReceived):
            await self._received(driver, event.htlc_id, event.amount_msat, event.payment_hash,
                                 event.cltv_expiry, event.onion_routing_packet)
        elif isinstance(event, HtlcFulfilled):
            await self._resolve(event.payment_hash, preimage=bytes(event.payment_preimage))
        elif isinstance(event, HtlcFailed):
            await self._resolve(event.payment_hash, reason=event.reason,
                                local_reason=event.local_reason)
        elif isinstance(event, ChannelOpened):
            await self.store.writer.write(ledger.event_write("channel_opened", None, 0,
                                                             self.clock()))
        elif isinstance(event, ChannelClosed):
            await self.store.writer.write(ledger.event_write("channel_closed", None, 0,
                                                             self.clock()))
        self._changed()

    async def _on_watch(self, driver: ChannelDriver, watch: Watch) -> None:
        if self.onchain is not None:
            await self.onchain.on_watch(driver, watch)
        if self.tower_hook is not None:
            await self.tower_hook.on_watch(driver, watch)
            await self.save_chain()  # the penalty's wallet address, handed out
        self._changed()

    async def _resolve(self, payment_hash: bytes, *, preimage: bytes | None = None,
                       reason: bytes = b"", local_reason: str = "") -> None:
        payment_id = self._sent_by_hash.get(payment_hash)
        if payment_id is None or self._payments[payment_id]["state"] != ledger.IN_FLIGHT:
            return
        row = self._payments[payment_id]
        now = self.clock()
        if preimage is not None:
            values: dict[str, Any] = dict(state=ledger.SUCCEEDED, payment_preimage=preimage,
                                          resolved_unix=now)
            kind = "payment_succeeded"
        else:
            code, message = FailureCode.TEMPORARY_FAILURE, local_reason or "failed"
            if reason:
                try:
                    report = decode_failure(reason, payment_hash=payment_hash,
                                            onion_routing_packet=row["packet"],
                                            hub_node_id=self.terms.hub_node_id,
                                            payee_node_id=row["counterparty_node_id"])
                    code, message = report.failure.code, report.describe()
                except RoutingFormatError as exc:
                    message = f"unreadable failure reason: {exc}"
            values = dict(state=ledger.FAILED, failure_code=int(code), failure_message=message,
                          resolved_unix=now)
            kind = "payment_failed"
        writes = [ledger.payment_update(payment_id, **values),
                  ledger.event_write(kind, payment_id, row["amount_msat"], now)]
        if preimage is None and row["refund_of_payment_id"]:
            writes.append(ledger.refund_release(row["refund_of_payment_id"], row["amount_msat"]))
        await self.store.writer.write(ledger.compose(*writes))
        row.update(values)
        self._done.setdefault(payment_id, trio.Event()).set()

    async def _received(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                        payment_hash: bytes, cltv_expiry: int, packet: bytes) -> None:
        key = (driver.channel_key, htlc_id)
        if key in self._answering:
            return
        self._answering.add(key)
        try:
            await self._receive(driver, htlc_id, amount_msat, payment_hash, cltv_expiry,
                                packet)
        finally:
            self._answering.discard(key)

    async def _receive(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                       payment_hash: bytes, cltv_expiry: int, packet: bytes) -> None:
        preimage = self._known_preimage(payment_hash)
        if preimage is not None:  # replayed after a restart or a lost link: same answer
            self._answer(driver, htlc_id, preimage)
            return
        try:
            opened = open_payee_payload(packet, payment_hash=payment_hash,
                                        node_secret=self.node_secret)
        except RoutingFormatError:
            self._refuse(driver, htlc_id, amount_msat, payment_hash, packet,
                         Failure(FailureCode.INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS,
                                 htlc_msat=amount_msat, height=self.height()))
            return
        invoice = self._invoices.get(payment_hash)
        verdict = check_incoming_payment(amount_msat=amount_msat, cltv_expiry=cltv_expiry,
                                         payment_hash=payment_hash, packet=opened,
                                         invoice=invoice, now=self.clock(),
                                         height=self.height())
        if not isinstance(verdict, Accepted):
            self._refuse(driver, htlc_id, amount_msat, payment_hash, packet, verdict.failure)
            return
        payment_id = _secrets.token_hex(16)
        now = self.clock()
        # A refund names the payment hash it refunds: linked when it is one we paid (anyone
        # may name us as a refund's destination; then it is a plain payment received).
        refund_of = (self._sent_by_hash.get(verdict.refund_of_payment_hash)
                     if verdict.refund_of_payment_hash is not None else None)
        row = dict(payment_id=payment_id, direction=ledger.RECEIVED, idempotency_key=None,
                   payment_hash=payment_hash, counterparty_node_id=None,
                   amount_msat=amount_msat, fee_msat=0, state=ledger.SUCCEEDED,
                   payment_preimage=verdict.payment_preimage,
                   bolt11=invoice.invoice.bolt11 if invoice else None, packet=None,
                   channel_key=driver.channel_key, refund_of_payment_id=refund_of,
                   refunded_msat=0, failure_code=0, failure_message="",
                   created_unix=now, resolved_unix=now,
                   payer_node_id=opened.payload.payer_node_id)
        if invoice is not None:  # before any await: a second HTLC is refused as paid
            self._invoices[payment_hash] = InvoiceRecord(invoice.invoice, invoice.payment_preimage,
                                                         True)
        self._received_by_hash[payment_hash] = payment_id
        self._payments[payment_id] = row
        writes = [ledger.payment_insert(row)]
        if invoice is not None:
            writes.append(ledger.invoice_paid(payment_hash, amount_msat, payment_id))
        kind = "refund_received" if refund_of is not None else "invoice_paid" \
            if invoice is not None else "payment_received"
        writes.append(ledger.event_write(kind, payment_id, amount_msat, now))
        await self.store.writer.write(ledger.compose(*writes))
        self._answer(driver, htlc_id, verdict.payment_preimage)

    def _answer(self, driver: ChannelDriver, htlc_id: int, preimage: bytes) -> None:
        """Fulfill a received HTLC whose receipt is durable. Refused when the link is
        not up (dropped while the receipt was written, or still re-establishing) or the
        channel failed meanwhile: the next link answers it again (``_settle_held``), and
        the watch knows the preimage so that the HTLC is claimed on chain if it comes
        to that."""
        try:
            driver.fulfill_htlc(htlc_id, preimage)
        except LocalProtocolError as exc:
            log.info("%r: fulfill of HTLC %d deferred: %s", driver, htlc_id, exc.message)
            self._preimage_to_watch(driver, preimage)

    def _refuse(self, driver: ChannelDriver, htlc_id: int, amount_msat: int,
                payment_hash: bytes, packet: bytes, failure: Failure) -> None:
        reason = encode_failure(failure, origin=FailureOrigin.PAYEE, payment_hash=payment_hash,
                                onion_routing_packet=packet, node_secret=self.node_secret)
        try:
            driver.fail_htlc(htlc_id, reason)
        except LocalProtocolError as exc:  # answered again on the next link
            log.info("%r: fail of HTLC %d deferred: %s", driver, htlc_id, exc.message)

    def _preimage_to_watch(self, driver: ChannelDriver, preimage: bytes) -> None:
        """Give the channel's watch a preimage the channel itself does not hold yet (a
        fulfill refused or not sent): if the channel goes on chain, the watch claims
        the HTLC with it, and goes on chain for it by its deadline. The preimage is in
        our ledger first; ``run`` gives the watches every such preimage again after a
        restart."""
        if self.onchain is not None:
            self.onchain.enforcer.add_preimage(driver, preimage)

    def _feed_watches(self) -> None:
        """After a restart: every preimage we know of an HTLC still in a channel, to
        that channel's watch (``_preimage_to_watch``)."""
        for driver in self.session.drivers:
            for h in driver.channel.d.book.htlcs.values():
                if h.offered_by is Side.REMOTE and h.removal is None:
                    preimage = self._known_preimage(h.payment_hash)
                    if preimage is not None:
                        self._preimage_to_watch(driver, preimage)

    def _known_preimage(self, payment_hash: bytes) -> bytes | None:
        payment_id = self._received_by_hash.get(payment_hash)
        if payment_id is None:
            return None
        preimage = self._payments[payment_id]["payment_preimage"]
        return bytes(preimage) if preimage is not None else None

    async def _settle_held(self, nursery: trio.Nursery) -> None:
        """HTLCs committed and never answered (before a restart, or on a link that
        dropped before the answer was committed): answer each channel's once it is
        re-established on this link (the channel refuses an answer while its link is
        reestablishing). Every link does this, so an answer lost with a link is given
        again on the next; it looks again after each change the peer session reports,
        while a channel with unanswered HTLCs is still reestablishing on this link."""
        pending = [d for d in self.session.drivers if d.channel.received_htlcs()]
        while pending and self.session.connected:
            waiting = []
            for driver in pending:
                if driver.channel.link is LinkState.UP:
                    self._answer_held_of(nursery, driver)
                elif driver.channel.link is LinkState.REESTABLISHING:
                    waiting.append(driver)
            pending = waiting
            if pending:
                await self.session.wait_changed()

    def _answer_held_of(self, nursery: trio.Nursery, driver: ChannelDriver) -> None:
        for htlc_id, amount_msat, payment_hash, cltv in driver.channel.received_htlcs():
            if (driver.channel_key, htlc_id) in self._answering:
                continue  # arrived on this link: its HtlcReceived is being handled
            htlc = driver.channel.d.book.htlcs[(Side.REMOTE, htlc_id)]
            event = HtlcReceived(htlc_id=htlc_id, amount_msat=amount_msat,
                                 payment_hash=payment_hash, cltv_expiry=cltv,
                                 onion_routing_packet=bytes(htlc.onion))
            nursery.start_soon(self._on_event, driver, event)

    async def _reconcile(self) -> None:
        """Fail in-flight payments whose HTLC is in no channel: it never left."""
        offered = {h.payment_hash for d in self.session.drivers
                   for h in d.channel.d.book.htlcs.values() if h.offered_by is Side.LOCAL}
        for row in list(self._payments.values()):
            if row["state"] == ledger.IN_FLIGHT and row["payment_hash"] not in offered:
                await self._resolve(row["payment_hash"], local_reason="never sent (restart)")


class _NoBroadcaster:
    async def broadcast(self, raw_tx: bytes, txid: bytes, reason: str) -> None:
        raise errors.InvalidRequest("this client has no chain to broadcast on")


def node_key(node_seed: bytes) -> bytes:
    """The node's secret key (its node id is the public key) from the node seed."""
    return hmac.new(node_seed, b"chanhub client node key", "sha256").digest()


def _node_seed(db: Database, store: ChannelStore) -> bytes:
    """The stored (sealed) node seed, made on first open."""
    seed = store.load_secret(NODE_SEED)
    if seed is None:
        seed = _secrets.token_bytes(32)
        with db.engine.begin() as conn:
            store.secret_write(NODE_SEED, seed)(conn)
    return seed


def node_secret_of(store_url: str, key_source: Passphrase | KeyFile) -> bytes:
    """The node key of a client store, created with the store on first use (``init``
    needs it to authenticate before it knows the hub's terms)."""
    with errors.translate():
        db = Database.open(store_url, lock_name="client", version_locations=[MIGRATIONS])
        try:
            store = ChannelStore(db, open_secret_box(db, key_source), GroupWriter(db.engine))
            seed = _node_seed(db, store)
        finally:
            db.close()
    return node_key(seed)


def save_hub_terms(store_url: str, terms: HubTerms) -> None:
    with errors.translate():
        db = Database.open(store_url, lock_name="client", version_locations=[MIGRATIONS])
        try:
            value = json.dumps(dict(hub_node_id=terms.hub_node_id.hex(),
                                    base_fee_msat=terms.base_fee_msat, fee_ppm=terms.fee_ppm,
                                    cltv_expiry_delta_blocks=terms.cltv_expiry_delta_blocks))
            with db.engine.begin() as conn:
                ledger.meta_write("hub_terms", value)(conn)
        finally:
            db.close()


def stored_hub_terms(db: Database) -> HubTerms:
    value = db.read_sync(lambda conn: conn.execute(
        sa.select(ledger.meta.c.value).where(ledger.meta.c.name == "hub_terms")
    ).scalar_one_or_none())
    if value is None:
        raise errors.InvalidRequest("this client store has no hub yet: run `chanhub init`")
    d = json.loads(value)
    return HubTerms(bytes.fromhex(d["hub_node_id"]), int(d["base_fee_msat"]), int(d["fee_ppm"]),
                    int(d["cltv_expiry_delta_blocks"]))


def decode_invoice_unchecked(bolt11: str) -> Any:
    from client.invoices import parse_invoice
    return parse_invoice(bolt11)
