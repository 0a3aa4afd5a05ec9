"""The tower's chain watch: find breaches by locator, broadcast the client's penalties.

Theory of operation. The watcher is a ``BlockListener`` and a ``TipListener`` of the
tower's ``ChainFollower`` (channel/chain: reorgs in LDK's order). It keeps in memory
the set of every stored locator. For each connected block (synchronously, no I/O) it
computes ``SHA256(txid)[:16]`` of every transaction and notes the matches, and it
notes every spend of an output it guards and every second-stage txid it expects.
Then, once per sync step (``best_block_updated``, async):

1. for each match it reads the appointments under that locator (every client's: two
   parties of one channel may use one tower) and tries to open each with the txid
   (``protocol.driver.appointment.open_sealed``). One that opens is a breach: its
   ``JusticeKit`` is checked (every penalty spends an output of the breach
   transaction: a kit cannot make the tower publish unrelated transactions) and kept;
2. for each breach: the combined penalties (``penalty_txs``) go to the broadcaster,
   which resends them after every block until they are 6 deep, a reorg included. A
   combined penalty one of whose inputs another transaction took (the cheater's
   HTLC-success/timeout confirmed first) can never confirm: it is forgotten, and the
   single-output penalties (``output_penalty_txs``) of the outputs still untaken go
   out instead. When one of the expected second-stage txids confirms, the penalty
   on its output goes out (``second_stage_penalties``).
3. the state (follower tip, broadcaster, breaches with what was seen) is written to
   the store, so a restart resumes where it was; the kits themselves are reopened
   from the stored appointments.

A disconnected block takes back the spends and second-stage sightings it held. The
penalties already handed to the broadcaster stay there: they are valid again as
soon as the breach is back in the chain, and refused (kept, retried) meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from channel.chain.broadcaster import BroadcastRefused, RpcBroadcaster
from channel.chain.interfaces import BlockRef
from channel.chain.rpc import ChainUnavailable
from channel.tx import OutPoint, Tx
from hub.tower.store import StoredAppointment, TowerStore
from proto import tower_pb2
from protocol.driver.appointment import locator, open_sealed

log = logging.getLogger(__name__)


class InvalidKit(Exception):
    """A decrypted kit that is not a set of penalties for the breach transaction."""


@dataclass
class Breach:
    """One revoked commitment seen on chain, for one client, and its penalties."""

    txid: bytes
    client_node_id: bytes
    height: int
    penalties: list[Tx]
    singles: dict[OutPoint, Tx]
    second_stage: dict[bytes, Tx]
    spent_by: dict[OutPoint, tuple[bytes, int]] = field(default_factory=dict)
    second_seen: dict[bytes, int] = field(default_factory=dict)
    handed: set[bytes] = field(default_factory=set)  # txids given to the broadcaster

    def to_json(self) -> dict[str, Any]:
        return {
            "txid": self.txid.hex(), "client_node_id": self.client_node_id.hex(),
            "height": self.height,
            "spent_by": [[o.txid.hex(), o.index, t.hex(), h]
                         for o, (t, h) in self.spent_by.items()],
            "second_seen": [[t.hex(), h] for t, h in self.second_seen.items()],
            "handed": sorted(t.hex() for t in self.handed),
        }


def parse_kit(breach_txid: bytes, plaintext: bytes) -> tuple[list[Tx], dict[OutPoint, Tx],
                                                            dict[bytes, Tx]]:
    """(combined penalties, single penalties by the outpoint they take, second-stage
    penalties by second-stage txid); raises ``InvalidKit``."""
    try:
        kit = tower_pb2.JusticeKit.FromString(plaintext)
        penalties = [Tx.parse(raw) for raw in kit.penalty_txs]
        singles = [Tx.parse(raw) for raw in kit.output_penalty_txs]
        second = {bytes(s.htlc_txid): Tx.parse(s.penalty_tx)
                  for s in kit.second_stage_penalties}
    except Exception as exc:  # protobuf's DecodeError, Tx.parse's errors
        raise InvalidKit(f"undecodable kit: {exc}") from exc
    if kit.version != 1:
        raise InvalidKit(f"unknown kit version {kit.version}")
    if not penalties:
        raise InvalidKit("a kit without penalties")
    for tx in [*penalties, *singles]:
        if not all(i.outpoint.txid == breach_txid for i in tx.inputs):
            raise InvalidKit(f"penalty {tx.txid_hex()} spends other outputs than the breach's")
    by_outpoint: dict[OutPoint, Tx] = {}
    for tx in singles:
        if len(tx.inputs) != 1:
            raise InvalidKit(f"single-output penalty {tx.txid_hex()} has several inputs")
        by_outpoint[tx.inputs[0].outpoint] = tx
    for htlc_txid, tx in second.items():
        if len(htlc_txid) != 32 or [i.outpoint for i in tx.inputs] != [OutPoint(htlc_txid, 0)]:
            raise InvalidKit(f"second-stage penalty {tx.txid_hex()} does not take "
                             "its transaction's output")
    return penalties, by_outpoint, second


class TowerWatcher:
    """See the module docstring."""

    STATE_KEY = "watcher"

    def __init__(self, store: TowerStore, broadcaster: RpcBroadcaster) -> None:
        self.store = store
        self.broadcaster = broadcaster
        self.locators: set[bytes] = set()
        self.breaches: dict[tuple[bytes, bytes], Breach] = {}  # (txid, client) -> breach
        self._found: list[tuple[bytes, int]] = []  # (locator match txid, height)
        self._found_txids: set[bytes] = set()
        self._early: list[tuple[Tx, int]] = []
        self.height = broadcaster.tip_height
        self.tip: BlockRef | None = None

    # -- start -----------------------------------------------------------------------------

    async def load(self) -> None:
        """The locator index and the breaches of the last run (kits reopened)."""
        self.locators = self.store.all_locators()
        for item in self.store.get_json(self.STATE_KEY) or []:
            txid, client = bytes.fromhex(item["txid"]), bytes.fromhex(item["client_node_id"])
            stored = [a for a in await self.store.appointments_for(locator(txid))
                      if a.client_node_id == client]
            breach = self._open(txid, int(item["height"]), stored[0]) if stored else None
            if breach is None:
                continue
            breach.spent_by = {OutPoint(bytes.fromhex(t), i): (bytes.fromhex(s), h)
                               for t, i, s, h in item["spent_by"]}
            breach.second_seen = {bytes.fromhex(t): h for t, h in item["second_seen"]}
            breach.handed = {bytes.fromhex(t) for t in item["handed"]}
            self.breaches[(txid, client)] = breach

    def add_locator(self, loc: bytes) -> None:
        self.locators.add(loc)

    # -- BlockListener -----------------------------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self.height = height
        for tx in txs:
            txid = tx.txid()
            if locator(txid) in self.locators:
                self._found.append((txid, height))
                self._found_txids.add(txid)
            if self._found_txids and any(i.outpoint.txid in self._found_txids
                                         for i in tx.inputs):
                # A spend of a breach found in this very step (the cheater's
                # second stage in the same block, say): replayed once it is opened.
                self._early.append((tx, height))
            for breach in self.breaches.values():
                self._note(breach, tx, txid, height)

    @staticmethod
    def _note(breach: Breach, tx: Tx, txid: bytes, height: int) -> None:
        if txid in breach.second_stage:
            breach.second_seen.setdefault(txid, height)
        for txin in tx.inputs:
            if txin.outpoint.txid == breach.txid:
                breach.spent_by.setdefault(txin.outpoint, (txid, height))

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self.height = height - 1
        self._found = [(t, h) for t, h in self._found if h != height]
        self._found_txids = {t for t, _ in self._found}
        self._early = [(tx, h) for tx, h in self._early if h != height]
        for breach in self.breaches.values():
            breach.spent_by = {o: s for o, s in breach.spent_by.items() if s[1] != height}
            breach.second_seen = {t: h for t, h in breach.second_seen.items() if h != height}

    # -- TipListener ---------------------------------------------------------------------------

    async def best_block_updated(self, tip: BlockRef) -> None:
        self.tip = tip
        found, early = list(self._found), list(self._early)
        for txid, height in found:
            for stored in await self.store.appointments_for(locator(txid)):
                key = (txid, stored.client_node_id)
                if key in self.breaches:
                    continue
                breach = self._open(txid, height, stored)
                if breach is not None:
                    log.warning("breach: revoked commitment %s of client %s confirmed at "
                                "height %d; broadcasting its penalties", txid[::-1].hex(),
                                stored.client_node_id.hex(), height)
                    self.breaches[key] = breach
                    for spender, spent_height in early:
                        self._note(breach, spender, spender.txid(), spent_height)
        # Forgotten only now: if the store failed above, the next step tries again
        # (breaches already opened are skipped by their key).
        del self._found[:len(found)]
        del self._early[:len(early)]
        self._found_txids = {t for t, _ in self._found}
        for breach in self.breaches.values():
            await self._act(breach)
        await self.store.put_json(self.STATE_KEY,
                                  [b.to_json() for b in self.breaches.values()])

    def _open(self, txid: bytes, height: int, stored: StoredAppointment) -> Breach | None:
        plaintext = open_sealed(txid, stored.nonce, stored.encrypted_blob)
        if plaintext is None:
            return None  # a locator collision, or a blob not sealed for this txid
        try:
            penalties, singles, second = parse_kit(txid, plaintext)
        except InvalidKit as exc:
            log.error("appointment of client %s for %s: %s", stored.client_node_id.hex(),
                      txid[::-1].hex(), exc)
            return None
        return Breach(txid, stored.client_node_id, height, penalties, singles, second)

    async def _act(self, breach: Breach) -> None:
        dead: set[OutPoint] = set()
        for tx in breach.penalties:
            inputs = [i.outpoint for i in tx.inputs]
            if any(o in breach.spent_by and breach.spent_by[o][0] != tx.txid() for o in inputs):
                # Another transaction took one of its inputs: it can never confirm.
                self.broadcaster.forget(tx.txid_hex())
                dead.update(inputs)
            else:
                await self._send(breach, tx, "penalty")
        for outpoint in sorted(dead, key=lambda o: o.index):
            single = breach.singles.get(outpoint)
            if single is not None and outpoint not in breach.spent_by:
                await self._send(breach, single, "penalty (single output)")
        for htlc_txid in breach.second_seen:
            await self._send(breach, breach.second_stage[htlc_txid], "second-stage penalty")

    async def _send(self, breach: Breach, tx: Tx, label: str) -> None:
        if tx.txid() in breach.handed:
            return  # the broadcaster resends it after every block until it is deep
        breach.handed.add(tx.txid())
        try:
            await self.broadcaster.broadcast(tx, label=f"{label} for {breach.txid[::-1].hex()}",
                                             keep_if_refused=True)
        except BroadcastRefused as exc:
            log.error("%s %s refused (kept, retried every block): %s", label, tx.txid_hex(),
                      exc)
        except ChainUnavailable as exc:
            log.warning("%s %s deferred: %s", label, tx.txid_hex(), exc)
