"""BOLT #5 enforcement of a party's channels: the ``channel.watch`` objects driven from
the party's chain follower. The hub and the client both run this (through
``ChannelsOnChain``); neither has enforcement code of its own.

Theory of operation. One ``WatchSet`` holds one ``ChannelWatch`` per channel that has
a funding outpoint and the peer's signature on our first commitment. ``Enforcer`` is a
``BlockListener`` of the follower: before every block connected or disconnected it
brings each watch up to date with its channel (``refresh``: a watch is created for a
new channel; our latest commitment, the peer's unrevoked ones and the preimages the
channel knows are fed when they changed; 1.2 us per unchanged channel), then hands the
block to the ``WatchSet``. Feeding from the channel's current data, which may be ahead
of its stored snapshot, is safe: a commitment the peer signed or we signed is one that
can appear on chain whether or not our snapshot holds it, and a preimage known is
never wrong to use. The records of revoked commitments (``Watch("revoked_commitment")``)
are durable in the channel store before the channel forgets those HTLCs; each watch
looks them up there (``revoked_lookup``, by txid, only when a funding spend it does not
recognise confirms) instead of holding them.

After the sync step, before the chain bundle is stored (``ChainServices``'
``before_persist``), ``act`` executes what the watches returned, in order:
``Broadcast`` -> the party's broadcaster (a replaced version forgotten first; kept and
retried every block if refused), ``GoOnChain`` -> ``driver.fail()`` (its commitment
goes out through the driver's Broadcast; nothing for a channel already ON_CHAIN),
``PreimageLearned`` -> ``on_preimage`` (the hub settles the upstream HTLC), the rest
(closes, claims confirmed or buried, outputs lost, reversals) -> logged and
``on_report``. Then the feerate for the next step is read
from the estimator. The watches' JSON (``to_json``) is a section of the chain bundle,
so it is stored in the same write as the follower's tip, the wallet (which holds each
watch's destination address) and the broadcaster's pending set (which holds what was
just broadcast). A crash before that write replays the step from the previous bundle:
the watches return the same outputs again, and each consumer takes a repeat calmly
(the broadcaster knows the tx, ``fail`` of a failed channel is refused, the router
settles a forward once).

The channel's state follows its watch (``sync_states``, after every step, and at once
on the event): a funding spend confirmed (``ChannelClosedOnChain``, any kind but our
agreed close of a channel already CLOSED) -> ``driver.funding_spent()``: ON_CHAIN for
good, stored, so the hub routes nothing into it, the client pays nothing over it, and
no ``GoOnChain`` sends a commitment that would double spend the close. A
``Reversed(ChannelClosedOnChain)`` leaves it ON_CHAIN: the watch broadcasts the spend
again (``closing``), and no commitment of ours may follow it, so the channel is
unusable for good. ``ChannelResolved`` (every output claimed or lost, no HTLC output
open, ``ANTI_REORG_DELAY`` deep) -> ``driver.resolved()``. Made from the watch's
reported events every step, so a state change a crash lost is made again. A RESOLVED
channel's watch is dropped ``WATCH_PRUNE_BLOCKS`` after its resolution (from the
WatchSet and, at the next write, the chain bundle), and never made again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from channel.chain.broadcaster import BroadcastRefused
from channel.chain.interfaces import BlockRef
from channel.chain.rpc import ChainUnavailable
from channel.chain.services import ChainServices
from channel.commitment import Side
from channel.tx import Tx
from channel.watch import (
    Broadcast,
    ChannelClosedOnChain,
    ChannelResolved,
    ChannelWatch,
    ClaimUneconomical,
    GoOnChain,
    LocalCommitment,
    OutputLost,
    PreimageLearned,
    RemoteCommitment,
    Reversed,
    RevokedCommitment,
    WatchConfig,
    WatchEvent,
    WatchOutput,
    WatchSet,
)
from protocol.actions import Watch
from protocol.driver.driver import ChannelDriver
from protocol.errors import LocalProtocolError
from protocol.table import ChannelState

log = logging.getLogger(__name__)

#: The estimator's target for the watches' base feerate: the watch itself multiplies
#: it as a claim's deadline comes near (docs/dev/watch-api.md, "Fees").
FEE_CONF_TARGET_BLOCKS = 6

# A channel whose opening is not signed both ways has nothing to enforce yet.
_UNSIGNED = (ChannelState.INIT, ChannelState.AWAIT_ACCEPT,
             ChannelState.AWAIT_FUNDING_OUTPOINT, ChannelState.AWAIT_FUNDING_CREATED,
             ChannelState.AWAIT_FUNDING_SIGNED)

#: How long a RESOLVED channel's watch is kept after its ``ChannelResolved`` height
#: before it is dropped from the WatchSet and the chain bundle: the resolution is
#: already ``ANTI_REORG_DELAY`` (6) deep; the watch stays for a reorg far deeper than
#: any seen on mainnet since 2013 (24 blocks), at 9 us per block, then costs nothing.
WATCH_PRUNE_BLOCKS = 100

# States whose channel has no off-chain life left to end: the close is the watch's.
_SPENT = (ChannelState.ON_CHAIN, ChannelState.RESOLVED)

DriverCallback = Callable[[ChannelDriver, Any], Awaitable[None]]


def watch_key(driver: ChannelDriver) -> str:
    return driver.channel_key.hex()


def local_commitment(driver: ChannelDriver) -> LocalCommitment:
    """Our latest commitment as the peer signed it (what ``Channel.fail()`` sends)."""
    channel = driver.channel
    d = channel.d
    view = channel.latest_view(Side.LOCAL)
    return LocalCommitment(d.local_ctn, view.local_msat, view.remote_msat,
                           tuple(h.as_commitment_htlc() for h in view.htlcs),
                           view.feerate_per_kw, d.local_commit_signature,
                           tuple(d.local_htlc_signatures))


def remote_commitments(driver: ChannelDriver) -> list[RemoteCommitment]:
    """The peer's unrevoked commitments with their points, as ``build_remote`` picks them."""
    channel = driver.channel
    d = channel.d
    numbers = [(d.remote_oldest_ctn, d.remote_current_point)]
    if d.remote_ctn > d.remote_oldest_ctn:
        numbers.append((d.remote_oldest_ctn + 1, d.remote_next_point))
    out = []
    for number, point in numbers:
        if not point:
            continue
        view = channel.view_of(Side.REMOTE, number)
        out.append(RemoteCommitment(number, point, view.local_msat, view.remote_msat,
                                    tuple(h.as_commitment_htlc() for h in view.htlcs),
                                    view.feerate_per_kw))
    return out


def revoked_record(watch: Watch) -> RevokedCommitment:
    """``Watch("revoked_commitment")`` -> the watch's record, field for field."""
    return RevokedCommitment(int(watch.commitment_number or 0), watch.txid, watch.htlc_outputs,
                             watch.to_local_output_index, watch.to_local_amount_sat,
                             watch.feerate_per_kw)


def known_preimages(driver: ChannelDriver) -> list[bytes]:
    """Every preimage in the channel's book: HTLCs we fulfilled and ones the peer did."""
    return [h.removal.preimage for h in driver.channel.d.book.htlcs.values()
            if h.removal is not None and h.removal.preimage is not None]


class Enforcer:
    """See the module docstring. ``drivers`` lists the party's channel drivers;
    ``settle(driver)`` runs what was queued on a driver even with its peer offline;
    ``on_preimage(driver, PreimageLearned)`` and ``on_report(driver, event)`` are the
    owner's (both optional)."""

    def __init__(self, chain: ChainServices, drivers: Callable[[], Iterable[ChannelDriver]],
                 *, settle: Callable[[ChannelDriver], Awaitable[None]] | None = None,
                 on_preimage: DriverCallback | None = None,
                 on_report: DriverCallback | None = None) -> None:
        self.chain = chain
        self.drivers = drivers
        self._settle = settle
        self.on_preimage = on_preimage
        self.on_report = on_report
        self.watches = WatchSet()
        self.feerate_per_kw = 0  # 0: not read yet (the watch's floor applies)
        # key -> (channel object, local_ctn, remote_oldest_ctn, remote_ctn) last fed
        self._fed: dict[str, tuple[object, int, int, int]] = {}
        self._saved: dict[str, Any] = dict(chain.restored_sections.get("watches", {}))
        chain.follower.add_listener(self)
        chain.before_persist.append(self)
        chain.sections["watches"] = self.to_json

    # -- the watches ------------------------------------------------------------------

    def watch_of(self, driver: ChannelDriver) -> ChannelWatch | None:
        return self.watches.watches.get(watch_key(driver))

    def add_preimage(self, driver: ChannelDriver, preimage: bytes) -> None:
        """A preimage the channel itself does not hold (a fulfill refused, not sent, or
        impossible off chain): its watch claims the HTLC with it if the channel is or
        goes on chain. The caller stored it first and gives it again after a restart."""
        self.refresh()
        watch = self.watch_of(driver)
        if watch is not None:
            watch.add_preimage(preimage)

    def our_commitment_txid(self, driver: ChannelDriver) -> bytes | None:
        """The txid of our latest commitment as the watch holds it (what ``fail()``
        broadcasts), or None before the channel is watched."""
        self.refresh()
        watch = self.watch_of(driver)
        tx = watch.local_commitment_tx() if watch is not None else None
        return tx.txid() if tx is not None else None

    def _revoked_lookup(self, driver: ChannelDriver) -> Callable[[bytes], RevokedCommitment | None]:
        """By txid from the store; a record found is remembered (the watch asks again
        at every block once a breach confirmed, and a stored record never changes). A
        miss is not: the channel holds the peer's secret a moment before the record's
        write is durable, and a block may come in between."""
        store, channel_key = driver.ctx.store, driver.channel_key
        found: dict[bytes, RevokedCommitment] = {}

        def lookup(txid: bytes) -> RevokedCommitment | None:
            if txid not in found:
                record = next((revoked_record(Watch.from_record(stored.record))
                               for stored in store.load_watches(channel_key)
                               if stored.kind == "revoked_commitment" and stored.txid == txid),
                              None)
                if record is None:
                    return None
                found[txid] = record
            return found[txid]

        return lookup

    def _create(self, driver: ChannelDriver) -> ChannelWatch:
        channel = driver.channel
        key = watch_key(driver)
        saved = self._saved.pop(key, None)
        lookup = self._revoked_lookup(driver)
        if saved is not None:
            return ChannelWatch.from_json(saved, channel.secrets, channel.revocations, lookup)
        log.info("%r: watched on chain from height %d", driver, self.chain.tip.height)
        return ChannelWatch(channel.static, channel.secrets, channel.revocations,
                            self.chain.wallet.new_script_pubkey(),
                            config=WatchConfig(minimum_depth=max(channel.minimum_depth, 1)),
                            tip_height=self.chain.tip.height, revoked_lookup=lookup)

    def refresh(self) -> None:
        """Bring every watch up to date with its channel (see the module docstring)."""
        for driver in self.drivers():
            channel = driver.channel
            d = channel.d
            if channel.state in _UNSIGNED or not d.funding_txid or \
                    not d.local_commit_signature:
                continue
            key = watch_key(driver)
            watch = self.watches.watches.get(key)
            if watch is None and channel.state is ChannelState.RESOLVED and \
                    key not in self._saved:
                continue  # resolved and pruned: watched no more
            if watch is None:
                watch = self._create(driver)
                self.watches.add(key, watch)
            if watch.revocations is not channel.revocations:  # channel rebuilt from store
                watch.secrets, watch.revocations = channel.secrets, channel.revocations
            if self.feerate_per_kw:
                watch.set_feerate(self.feerate_per_kw)
            fed = (channel, d.local_ctn, d.remote_oldest_ctn, d.remote_ctn)
            if self._fed.get(key) != fed:
                self._fed[key] = fed
                watch.set_local_commitment(local_commitment(driver))
                watch.set_remote_commitments(remote_commitments(driver))
            for preimage in known_preimages(driver):
                watch.add_preimage(preimage)

    # -- BlockListener: one sync step -------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self.refresh()
        self.watches.block_connected(height, block_hash, txs)

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self.refresh()
        self.watches.block_disconnected(height, block_hash)

    async def best_block_updated(self, tip: BlockRef) -> None:
        """After the sync step, before the bundle is stored: act, then the feerate."""
        await self.act(self.watches.take_outputs())
        await self.sync_states(tip.height)
        self.feerate_per_kw = await self.chain.fee_estimator.feerate_sat_per_kw(
            FEE_CONF_TARGET_BLOCKS)

    # -- what the watches returned ----------------------------------------------------

    def _driver(self, key: str) -> ChannelDriver | None:
        return next((d for d in self.drivers() if watch_key(d) == key), None)

    async def act(self, outputs: dict[str, list[WatchOutput]]) -> None:
        for key, outs in outputs.items():
            driver = self._driver(key)
            for out in outs:
                if isinstance(out, Broadcast):
                    await self._broadcast(driver, out)
                elif driver is None:
                    log.warning("channel %s (no driver): %r", key, out)
                elif isinstance(out, GoOnChain):
                    await self._go_on_chain(driver, out)
                else:
                    await self._report(driver, out)

    async def _broadcast(self, driver: ChannelDriver | None, out: Broadcast) -> None:
        broadcaster = self.chain.broadcaster
        if out.replaces is not None:
            broadcaster.forget(out.replaces[::-1].hex())
        tx: Tx = out.tx
        log.info("%r: broadcast %s %s (deadline %d)", driver, out.label, tx.txid_hex(),
                 out.deadline_height)
        try:
            await broadcaster.broadcast(tx, label=f"{out.label} {tx.txid_hex()}",
                                        keep_if_refused=True)
        except BroadcastRefused as exc:
            log.error("%r: %s %s refused (%s); retried every block", driver, out.label,
                      tx.txid_hex(), exc)
        except ChainUnavailable as exc:
            log.warning("%r: %s %s deferred: %s", driver, out.label, tx.txid_hex(), exc)

    async def _go_on_chain(self, driver: ChannelDriver, out: GoOnChain) -> None:
        if driver.channel.state in _SPENT:
            return  # the close is on chain already: our commitment would double spend
        log.warning("%r: HTLC %d (%s by us) unresolved at its on-chain deadline %d: "
                    "force close", driver, out.htlc_id,
                    "offered" if out.offered_by_us else "received", out.deadline_height)
        try:
            driver.fail(f"HTLC {out.htlc_id} reached its on-chain deadline")
        except LocalProtocolError as exc:  # already failed or closed: its tx is out
            log.info("%r: %s", driver, exc.message)
            return
        if self._settle is not None:
            await self._settle(driver)

    async def sync_states(self, tip_height: int) -> None:
        """Every channel's state as its watch says it is now: a close on chain moves it
        to ON_CHAIN, a resolved close to RESOLVED (``_to_chain_state``); a resolved
        watch buried ``WATCH_PRUNE_BLOCKS`` deep is dropped. Run after every step, so
        a state change a crash lost (the bundle holds the reported event, the channel
        store not yet its Persist) is made again."""
        by_key: dict[str, ChannelDriver] | None = None
        for key, watch in list(self.watches.watches.items()):
            if watch.closed_on_chain() is None and watch.resolved_on_chain() is None:
                continue  # open (or its close reorged out: nothing to change back)
            if by_key is None:  # once per step, only when a watch has a close
                by_key = {watch_key(d): d for d in self.drivers()}
            driver = by_key.get(key)
            if driver is None:
                continue
            await self._to_chain_state(driver, watch)
            resolved = watch.resolved_on_chain()
            if resolved is not None and driver.channel.state is ChannelState.RESOLVED \
                    and tip_height >= resolved.height + WATCH_PRUNE_BLOCKS:
                log.info("%r: resolved at %d, buried: no longer watched", driver,
                         resolved.height)
                self.watches.remove(key)
                self._fed.pop(key, None)

    async def _to_chain_state(self, driver: ChannelDriver, watch: ChannelWatch) -> None:
        """ON_CHAIN once the funding output is spent by a confirmed transaction, unless
        it is our agreed close (the channel is CLOSED: it stays so, nothing off chain
        was left). A reorg of the spend leaves ON_CHAIN: the spend is broadcast again
        (``closing``) and no commitment of ours may follow it, so the channel is
        unusable for good. RESOLVED once the watch says the close is resolved."""
        state = driver.channel.state
        if state is ChannelState.RESOLVED:
            return
        close = watch.closed_on_chain()
        resolved = watch.resolved_on_chain()
        queued = False
        try:
            if close is not None and state is not ChannelState.ON_CHAIN and not (
                    close.kind == "cooperative" and state is ChannelState.CLOSED):
                log.warning("%r: funding output spent on chain by %s (%s): no update off "
                            "chain from now on", driver, close.txid[::-1].hex(), close.kind)
                driver.funding_spent()
                queued = True
            if resolved is not None and driver.channel.state in (ChannelState.ON_CHAIN,
                                                                  ChannelState.CLOSED):
                log.info("%r: close resolved at %d", driver, resolved.height)
                driver.resolved()
                queued = True
        except LocalProtocolError as exc:
            log.info("%r: %s", driver, exc.message)
        if queued and self._settle is not None:
            await self._settle(driver)

    async def _report(self, driver: ChannelDriver, event: WatchEvent | Reversed) -> None:
        if isinstance(event, ChannelClosedOnChain | ChannelResolved):
            watch = self.watch_of(driver)
            if watch is not None:  # the state first: the owner's report tells it
                await self._to_chain_state(driver, watch)
        if isinstance(event, ClaimUneconomical):
            log.warning("%r: %s (%d sat) not claimed: worth less than its fee at %d sat/kw",
                        driver, event.label, event.amount_sat, event.feerate_per_kw)
        elif isinstance(event, OutputLost | Reversed):
            log.warning("%r: %r", driver, event)
        else:
            log.info("%r: %r", driver, event)
        if isinstance(event, PreimageLearned) and self.on_preimage is not None:
            await self.on_preimage(driver, event)
        if self.on_report is not None:
            await self.on_report(driver, event)

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Every watch's state by channel key; restored watches not yet matched to a
        driver are kept as they were."""
        out = dict(self._saved)
        out.update({key: w.to_json() for key, w in self.watches.watches.items()})
        return out
