"""A party's channels on its own chain: what the hub and the client both run between
their ``ChannelDriver``s and their ``channel.chain.ChainServices``.

Theory of operation. ``ChannelsOnChain`` owns no state of its own: everything it needs
after a restart is in the chain bundle (``ChainServices.to_json()``: the wallet's
signed transactions and locks, the tracker's watches and the spends it saw, the
broadcaster's pending set) or in the channels' snapshots. The owner gives it the
drivers to look at and the ``persist`` callback that writes the bundle to its store
(the same one ``ChainServices.open`` got); it awaits that before anything it did can
matter to someone else.

Funding a channel we open (``FundingNeeded``): the wallet builds and signs the funding
transaction and reserves its coins; the bundle, which holds the signed tx, is
persisted; only then is ``funding_outpoint`` given (the driver then persists the
channel and sends ``funding_created``). ``FundingSigned``: the peer holds a signature
we can close with, so the tx is broadcast (rebroadcast until confirmed). A channel
that fails before that releases the coins.

An agreed close (``Watch("closing")``) whose funding output is still unspent at its
``deadline_height`` is force closed (``best_block_updated``, a tip listener).

Funding, both roles (``Watch("funding")``): the tracker watches the funding txid with
the expected output (script and amount, BOLT #2's fundee check) to the channel's
``minimum_depth``, and the funding outpoint for its spend. ``TxConfirmed`` ->
``driver.funding_confirmed()``; ``TxMismatch`` is logged and never confirms.

A spend of the funding outpoint, and everything after it (our to_local after its
delay, the peer's commitments, penalties, HTLC outputs, preimages learned on chain,
HTLCs whose on-chain deadline came): the BOLT #5 watches, driven by ``Enforcer``
(protocol/driver/enforce.py) from the same follower; the agreed closing tx pays our
wallet (the close script is a wallet address), so the wallet finds it by itself.

``restore()`` runs once before the follower, so the watches it adds see the blocks the
follower replays. It finishes what a crash interrupted: the wallet looks past every
close script the channels hold (handed out after the last stored bundle, perhaps); a
funding tx signed for a channel that has the peer's signature but was never
broadcast goes out now; a channel restored before both first commitments were signed
cannot be completed (BOLT #2 forgets it on disconnect; nothing of the opening is
retransmitted) and is failed, which releases its coins, as are coins reserved for a
channel whose outpoint was never stored; a funding already deep enough is confirmed;
the watches are restored from the bundle (or made, for a channel new to them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from channel.chain.confirmations import (
    OutpointSpent,
    TxConfirmed,
    TxMismatch,
)
from channel.chain.interfaces import BlockRef
from channel.chain.services import ChainServices
from channel.chain.wallet import WalletError
from channel.funding import funding_output_index
from channel.tx import OutPoint, Tx, TxOut
from protocol.actions import ChannelFailed, Event, FundingNeeded, FundingSigned, Watch
from protocol.driver.driver import ChannelDriver
from protocol.driver.enforce import DriverCallback, Enforcer
from protocol.table import ChannelState

log = logging.getLogger(__name__)

Persist = Callable[[dict[str, Any]], Awaitable[None]]

#: Blocks within which a funding or sweep transaction should confirm (the estimator's
#: target): neither is urgent to the block, both should not linger for a day.
CONF_TARGET_BLOCKS = 6

_NOT_FUNDED = (ChannelState.INIT, ChannelState.AWAIT_ACCEPT,
               ChannelState.AWAIT_FUNDING_OUTPOINT, ChannelState.AWAIT_FUNDING_CREATED)


# BOLT #2: a channel not yet signed both ways is forgotten on disconnect, and a restart
# is one (the peer forgot it too; no message of the opening is retransmitted).
_UNSIGNED = (ChannelState.AWAIT_ACCEPT, ChannelState.AWAIT_FUNDING_OUTPOINT,
             ChannelState.AWAIT_FUNDING_CREATED, ChannelState.AWAIT_FUNDING_SIGNED)


def _hex(txid: bytes) -> str:
    """Internal byte order (as in channel data) to display hex (as the tracker keys)."""
    return txid[::-1].hex()


def funding_outpoint_of(driver: ChannelDriver) -> OutPoint | None:
    d = driver.channel.d
    if not d.funding_txid or d.state in _NOT_FUNDED:
        return None
    return OutPoint(d.funding_txid, d.funding_output_index)


class ChannelsOnChain:
    """See the module docstring."""

    def __init__(self, chain: ChainServices, drivers: Callable[[], Iterable[ChannelDriver]],
                 persist: Persist, *, on_change: Callable[[], None] | None = None,
                 funding_depth: Callable[[ChannelDriver], int] | None = None,
                 settle: Callable[[ChannelDriver], Awaitable[None]] | None = None,
                 on_preimage: DriverCallback | None = None,
                 on_report: DriverCallback | None = None) -> None:
        """``funding_depth``: the confirmations the owner itself waits for before
        ``funding_confirmed()`` (the larger of it and the channel's ``minimum_depth``
        counts: a funder may wait longer than its fundee asked). ``settle(driver)``:
        execute what a command queued on the driver now even if its peer is offline
        (``PeerSession.idle``), so a force close decided here is broadcast at once.
        ``on_preimage`` and ``on_report``: the enforcer's (protocol/driver/enforce.py)."""
        self.chain = chain
        self.drivers = drivers
        self._persist = persist
        self.on_change = on_change
        self._funding_depth = funding_depth
        self._settle = settle
        self.closing_deadlines: dict[bytes, int] = {}  # channel_key -> deadline height
        chain.follower.add_tip_listener(self)
        self.enforcer = Enforcer(chain, drivers, settle=settle, on_preimage=on_preimage,
                                 on_report=on_report)

    async def save(self) -> None:
        await self._persist(self.chain.to_json())

    # -- the owner's driver callbacks ----------------------------------------------------

    async def on_event(self, driver: ChannelDriver, event: Event) -> None:
        """Give every driver event here; it acts on the funding ones."""
        if isinstance(event, FundingNeeded):
            await self.fund(driver, event)
        elif isinstance(event, FundingSigned):
            await self.funding_signed(driver, event)
        elif isinstance(event, ChannelFailed):
            await self.release_funding(driver)

    async def on_watch(self, driver: ChannelDriver, watch: Watch) -> None:
        if watch.kind == "funding":
            self._watch_funding(driver)
            await self.save()
        elif watch.kind == "closing" and watch.deadline_height is not None:
            self.closing_deadlines[driver.channel_key] = watch.deadline_height

    async def best_block_updated(self, tip: BlockRef) -> None:
        """An agreed close not mined by its deadline (a fee too low to relay, a peer
        that never broadcast it): force close, our latest commitment is still valid
        while the funding output is unspent (``Watch("closing")``)."""
        for key, deadline in list(self.closing_deadlines.items()):
            driver = next((d for d in self.drivers() if d.channel_key == key), None)
            outpoint = funding_outpoint_of(driver) if driver is not None else None
            if driver is None or outpoint is None or \
                    driver.channel.state is not ChannelState.CLOSED or \
                    self.chain.tracker.spender(outpoint) is not None:
                del self.closing_deadlines[key]  # closed on chain (or not ours to watch)
            elif tip.height >= deadline:
                del self.closing_deadlines[key]
                log.warning("%r: the agreed close is not mined by height %d: force close",
                            driver, deadline)
                driver.fail("the cooperative close did not confirm in time")
                await self._settle_now(driver)

    async def _settle_now(self, driver: ChannelDriver) -> None:
        if self._settle is not None:
            await self._settle(driver)

    async def fund(self, driver: ChannelDriver, needed: FundingNeeded) -> None:
        """Sign the funding tx (coins reserved, nothing broadcast), persist the bundle
        holding it, then name the outpoint."""
        feerate = await self.chain.fee_estimator.feerate_sat_per_kw(CONF_TARGET_BLOCKS)
        try:
            tx = self.chain.wallet.fund(needed.script_pubkey, needed.amount_sat, feerate)
        except WalletError as exc:  # e.g. spent since the open was checked: nothing locked
            log.warning("cannot fund channel %r: %s", driver, exc)
            driver.fail(f"funding failed: {exc}")
            return
        await self.save()
        vout = funding_output_index(tx, TxOut(needed.amount_sat, needed.script_pubkey))
        driver.funding_outpoint(tx.txid(), vout)

    async def funding_signed(self, driver: ChannelDriver, event: FundingSigned) -> None:
        tx = self.chain.wallet.unbroadcast_tx(_hex(bytes(event.funding_txid)))
        if tx is None:
            log.warning("%r: no signed funding tx %s in the wallet", driver,
                        _hex(bytes(event.funding_txid)))
            return
        await self._broadcast_funding(driver, tx)

    async def _broadcast_funding(self, driver: ChannelDriver, tx: Tx) -> None:
        self._watch_funding(driver)
        self.chain.wallet.note_broadcast(tx)
        await self.save()
        await self.chain.broadcaster.broadcast(tx, label=f"funding {tx.txid_hex()}",
                                               keep_if_refused=True)
        await self.save()

    async def release_funding(self, driver: ChannelDriver) -> None:
        """The channel failed: coins reserved for a funding tx never broadcast are free."""
        d = driver.channel.d
        tx = self.chain.wallet.unbroadcast_tx(_hex(d.funding_txid)) if d.funding_txid else None
        if tx is not None:
            self.chain.wallet.release(tx)
            log.info("%r failed before its funding was broadcast: coins released", driver)
            await self.save()

    def funding_depth(self, driver: ChannelDriver) -> int:
        own = self._funding_depth(driver) if self._funding_depth is not None else 0
        return max(driver.channel.minimum_depth, own, 1)

    def _watch_funding(self, driver: ChannelDriver) -> None:
        outpoint = funding_outpoint_of(driver)
        if outpoint is None:
            return
        channel = driver.channel
        tracker = self.chain.tracker
        if channel.state is ChannelState.AWAIT_CHANNEL_READY:
            expected = (outpoint.index, TxOut(channel.d.funding_sat,
                                              channel.static.funding_script_pubkey))
            tracker.watch_tx(_hex(outpoint.txid), self.funding_depth(driver),
                             expect_output=expected)
        tracker.watch_outpoint(outpoint)

    # -- start and the chain's events ----------------------------------------------------

    async def restore(self) -> None:
        """Before the follower runs (see the module docstring)."""
        wallet, tracker = self.chain.wallet, self.chain.tracker
        # Close scripts handed out since the last bundle was stored: the wallet must
        # look past them all (in index order each one extends the look-ahead).
        close_scripts = {d.channel.d.close_script for d in self.drivers()} - {b""}
        while close_scripts:
            marked = {s for s in close_scripts if wallet.mark_used(s)}
            if not marked:
                break
            close_scripts -= marked
        referenced: set[str] = set()
        for driver in list(self.drivers()):
            d = driver.channel.d
            if d.funding_txid:
                referenced.add(_hex(d.funding_txid))
            if driver.channel.state in _UNSIGNED:
                log.warning("%r restored before both first commitments were signed: "
                            "failed", driver)
                driver.fail("restarted during the opening")
                await self.release_funding(driver)
                await self._settle_now(driver)
                continue
            if driver.channel.state is ChannelState.CLOSED:
                for stored in driver.ctx.store.load_watches(driver.channel_key):
                    watch = Watch.from_record(stored.record)
                    if watch.kind == "closing" and watch.deadline_height is not None:
                        self.closing_deadlines[driver.channel_key] = watch.deadline_height
            if funding_outpoint_of(driver) is None or not d.local_commit_signature:
                continue
            tx = wallet.unbroadcast_tx(_hex(d.funding_txid))
            if tx is not None and driver.channel.state is ChannelState.AWAIT_CHANNEL_READY:
                log.info("%r: funding signed before the restart, broadcast now", driver)
                await self._broadcast_funding(driver, tx)
            self._watch_funding(driver)
            if driver.channel.state is ChannelState.AWAIT_CHANNEL_READY and \
                    tracker.depth(_hex(d.funding_txid)) >= self.funding_depth(driver):
                driver.funding_confirmed()
        for txid in wallet.unbroadcast_txids():
            tx = wallet.unbroadcast_tx(txid)
            if txid not in referenced and tx is not None:
                log.info("funding tx %s belongs to no channel: coins released", txid)
                wallet.release(tx)
        self.enforcer.refresh()  # the watches restored from the bundle, new ones made
        await self.save()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Handle the tracker's events, in chain order, forever."""
        task_status.started()
        async for event in self.chain.events:
            if isinstance(event, TxConfirmed):
                self._funding_deep_enough(event.txid)
            elif isinstance(event, TxMismatch):
                log.warning("funding %s mined without the agreed output (%s): the channel "
                            "is never confirmed", event.txid, event.reason)
            elif isinstance(event, OutpointSpent):
                await self._funding_spent(event)
            if self.on_change is not None:
                self.on_change()

    def _funding_deep_enough(self, txid: str) -> None:
        for driver in self.drivers():
            d = driver.channel.d
            if d.funding_txid and _hex(d.funding_txid) == txid and \
                    driver.channel.state is ChannelState.AWAIT_CHANNEL_READY:
                driver.funding_confirmed()

    def driver_of_funding(self, outpoint: OutPoint) -> ChannelDriver | None:
        for driver in self.drivers():
            if funding_outpoint_of(driver) == outpoint:
                return driver
        return None

    async def _funding_spent(self, event: OutpointSpent) -> None:
        driver = self.driver_of_funding(event.outpoint)
        if driver is None:
            return
        txid = event.spending_tx.txid()
        if driver.channel.d.closing_txid == txid:
            log.info("%r: closing tx %s mined (it pays the wallet)", driver, _hex(txid))
        else:
            log.info("%r: the funding output was spent by %s (the watch resolves it)",
                     driver, _hex(txid))
