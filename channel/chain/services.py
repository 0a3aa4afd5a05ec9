"""The chain side of one party, wired once: what the hub daemon and the client SDK
both run.

Theory of operation. One `ChainServices` holds one follower feeding, in this
order, the wallet, the confirmation tracker and the broadcaster (so that when a
tracker event is handled, the wallet already knows the block's coins), plus the
fee estimator. All of them share one tip, and their state is one JSON-able
bundle (`to_json()`): the follower's tip, the wallet's coins and locks, the
tracker's watches, the broadcaster's pending set. The owner's `persist` callback
is awaited with that bundle after every sync step that moved the tip, before the
next poll; the owner writes it in one store transaction. Because every
listener's state and the tip are saved together, a restart from the bundle
replays exactly the blocks after it.

The wallet and the tracker also change outside a sync step (`fund()` locks
coins, `watch_tx` adds a watch): the owner persists `to_json()` after those as
well, before acting on them (rule 1 in spirit: nothing irrevocable before the
state that explains it is stored).

Tracker events arrive on `events` (a trio memory channel), in chain order.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from channel.chain.broadcaster import RpcBroadcaster
from channel.chain.confirmations import ChainEvent, ConfirmationTracker
from channel.chain.fees import RpcFeeEstimator
from channel.chain.follower import ChainFollower, RpcChainSource, checkpoint_at
from channel.chain.interfaces import BlockRef, TipListener
from channel.chain.rpc import BitcoinRpc
from channel.chain.wallet import OnchainWallet, WalletError

Persist = Callable[[dict[str, Any]], Awaitable[None]]

_CORE_SECTIONS = ("tip", "wallet", "tracker", "broadcaster")

#: A fresh wallet is born this many blocks below the node's tip (see `open`).
BIRTH_SAFETY_BLOCKS = 6


class ChainServices:
    """Follower + wallet + tracker + broadcaster + fee estimator for one party."""

    def __init__(
        self,
        rpc: BitcoinRpc,
        wallet: OnchainWallet,
        tracker: ConfirmationTracker,
        broadcaster: RpcBroadcaster,
        fee_estimator: RpcFeeEstimator,
        *,
        persist: Persist | None = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        tips = {wallet.tip.height, tracker.tip_height, broadcaster.tip_height}
        if len(tips) != 1:
            raise WalletError(f"the chain state's parts are at different heights: {tips}")
        self.rpc = rpc
        self.wallet = wallet
        self.tracker = tracker
        self.broadcaster = broadcaster
        self.fee_estimator = fee_estimator
        self._persist = persist
        # Owners' parts of the bundle (e.g. the channels' watches: protocol/driver/
        # enforce.py), by key, and what a restored bundle held under those keys.
        self.sections: dict[str, Callable[[], Any]] = {}
        self.restored_sections: dict[str, Any] = {}
        # Tip listeners run after each sync step BEFORE the bundle is stored: what they
        # act on (and record in their sections) is stored in the same write.
        self.before_persist: list[TipListener] = []
        self._send_event, self.events = trio.open_memory_channel[ChainEvent](math.inf)
        tracker.on_event = self._send_event.send_nowait
        wallet.broadcaster = broadcaster
        wallet.fee_estimator = fee_estimator
        self.follower = ChainFollower(
            RpcChainSource(rpc),
            wallet.tip,
            listeners=[wallet, tracker, broadcaster],
            tip_listeners=[broadcaster, self],
            poll_interval_s=poll_interval_s,
        )

    @classmethod
    async def open(
        cls,
        rpc: BitcoinRpc,
        seed: bytes,
        *,
        state: dict[str, Any] | None = None,
        birth_height: int | None = None,
        network: str = "regtest",
        min_depth: int = 1,
        confirm_depth: int = 6,
        fallback_sat_per_kw: int = 2_500,
        persist: Persist | None = None,
        poll_interval_s: float = 1.0,
    ) -> ChainServices:
        """From a saved bundle, or fresh with the wallet born at `birth_height`
        (default: `BIRTH_SAFETY_BLOCKS` below the node's height: nothing older
        is ours, and a short reorg of the newest blocks cannot take away the
        wallet's birth block, which it could not walk back from)."""
        fees = RpcFeeEstimator(rpc, fallback_sat_per_kw=fallback_sat_per_kw)
        if state is not None:
            try:
                broadcaster = RpcBroadcaster.from_json(
                    rpc, state["broadcaster"], confirm_depth=confirm_depth
                )
                wallet = OnchainWallet.from_json(
                    seed, state["wallet"], broadcaster=broadcaster, fee_estimator=fees
                )
                tracker = ConfirmationTracker.from_json(state["tracker"])
                saved_tip = BlockRef.from_json(state["tip"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise WalletError(f"malformed chain state: {exc!r}") from exc
            wallet.min_depth = min_depth
            if saved_tip != wallet.tip:
                raise WalletError("the saved chain state's tip is not its wallet's tip")
        else:
            source = RpcChainSource(rpc)
            if birth_height is None:
                height = max(0, await rpc.getblockcount() - BIRTH_SAFETY_BLOCKS)
            else:
                height = birth_height
            birth = await checkpoint_at(source, height)
            broadcaster = RpcBroadcaster(rpc, tip_height=birth.height, confirm_depth=confirm_depth)
            wallet = OnchainWallet(
                seed,
                birth,
                network=network,
                min_depth=min_depth,
                broadcaster=broadcaster,
                fee_estimator=fees,
            )
            tracker = ConfirmationTracker(birth.height)
        services = cls(
            rpc,
            wallet,
            tracker,
            broadcaster,
            fees,
            persist=persist,
            poll_interval_s=poll_interval_s,
        )
        if state is not None:
            services.restored_sections = {
                k: v for k, v in state.items() if k not in _CORE_SECTIONS
            }
        return services

    @property
    def tip(self) -> BlockRef:
        return self.follower.tip

    def to_json(self) -> dict[str, Any]:
        return {
            "tip": self.follower.tip.to_json(),
            "wallet": self.wallet.to_json(),
            "tracker": self.tracker.to_json(),
            "broadcaster": self.broadcaster.to_json(),
            **{key: part() for key, part in self.sections.items()},
        }

    async def best_block_updated(self, tip: BlockRef) -> None:
        for listener in list(self.before_persist):
            await listener.best_block_updated(tip)
        if self._persist is not None:
            await self._persist(self.to_json())

    async def sync_once(self) -> BlockRef:
        await self.follower.sync_once()
        return self.follower.tip

    async def run(
        self, *, task_status: trio.TaskStatus[BlockRef] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The chain service: caught up when started (with the tip), then polling."""
        await self.follower.run(task_status=task_status)
