"""``ChannelWatch``: the pure watch object of one channel (BOLT #5 on chain).

Theory of operation. The driver feeds it the chain (``block_connected`` /
``block_disconnected`` in the follower's order, or ``chain_updated`` with one sync
step's disconnects and connects), the current feerate estimate (``set_feerate``),
and the channel's data as it changes (``set_local_commitment``,
``set_remote_commitments``, ``add_revoked_commitment``, ``add_preimage``); each chain
call returns what to do: ``Broadcast``s and events. It does no I/O and reads no
clock: the same inputs give the same outputs, and ``to_json``/``from_json`` carry
its state across a restart.

It keeps only the confirmed transactions that touch the channel (the funding
transaction, the spend of the funding output, spends of that transaction's outputs
and of theirs: three levels, the deepest one a second-stage sweep), per block, so a
disconnected block takes its transactions with it. After every change it recomputes
everything from them (``resolve.py``): the events that hold now (compared with those
reported: new ones are reported, vanished ones ``Reversed``) and the claims not yet
resolved. A claim that may be broadcast is priced (``claims.py``) and announced
when it is new, comes back after a reorg, or is re-signed at a higher rate; the
funding transaction and a funding spend that confirmed and then left the chain are
announced again too. Caches of built commitments live in memory only.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from channel.commitment import (
    ChannelStatic,
    Commitment,
    Side,
    build_commitment,
    finalize_holder_commitment,
    finalize_holder_htlc_tx,
)
from channel.errors import ShachainError, TransactionError
from channel.keys import ChannelSecrets
from channel.shachain import RevocationStore
from channel.tx import OutPoint, Tx
from channel.watch import codec
from channel.watch.claims import (
    Claim,
    min_replacement_feerate,
    sign_claim,
    target_feerate,
)
from channel.watch.resolve import (
    ChainView,
    KeptTx,
    LocalData,
    Resolution,
    Resolver,
    htlc_deadlines,
)
from channel.watch.types import (
    ANTI_REORG_DELAY,
    STICKY_EVENTS,
    URGENT_CLAIM_BLOCKS,
    Broadcast,
    ChannelClosedOnChain,
    ChannelResolved,
    ClaimUneconomical,
    GoOnChain,
    LocalCommitment,
    RemoteCommitment,
    Reversed,
    RevokedCommitment,
    WatchConfig,
    WatchEvent,
    WatchOutput,
)


@dataclass(slots=True)
class _Sent:
    tx: Tx
    feerate_per_kw: int


class ChannelWatch:
    def __init__(
        self,
        static: ChannelStatic,
        secrets: ChannelSecrets,
        revocations: RevocationStore,
        destination_script_pubkey: bytes,
        *,
        config: WatchConfig | None = None,
        tip_height: int = 0,
        revoked_lookup: Callable[[bytes], RevokedCommitment | None] | None = None,
    ) -> None:
        """``revocations`` is the channel's live store of the peer's secrets
        (``Channel.revocations``): read when a revoked commitment confirms, never
        copied into the watch's state. ``destination_script_pubkey`` is the owner's
        wallet script every claim pays to.

        ``revoked_lookup`` (by txid) is for a driver that keeps the
        ``Watch("revoked_commitment")`` records in its own store, as it must anyway:
        a channel gets one per update, and the watch's JSON then holds none of them
        (only those given to ``add_revoked_commitment``)."""
        self.static = static
        self.secrets = secrets
        self.revocations = revocations
        self.destination_script_pubkey = destination_script_pubkey
        self.config = config or WatchConfig()
        self.tip_height = tip_height
        self.tip_hash = ""
        self.feerate_per_kw = self.config.min_feerate_per_kw
        self.local: LocalCommitment | None = None
        self.remotes: dict[int, RemoteCommitment] = {}
        self.revoked: dict[bytes, RevokedCommitment] = {}
        self.revoked_lookup = revoked_lookup
        self.preimages: dict[bytes, bytes] = {}
        # height -> (block hash, relevant txs in block order)
        self.blocks: dict[int, tuple[str, list[KeptTx]]] = {}
        # funding tx and funding spends ever confirmed, by txid: announced again if a
        # reorg takes them out
        self.seen: dict[bytes, Tx] = {}
        self.sent: dict[str, _Sent] = {}
        self.announced: dict[str, bytes] = {}
        self.reported: dict[str, WatchEvent] = {}
        self._local_cache: tuple[LocalCommitment, LocalData] | None = None
        self._remote_cache: dict[int, tuple[RemoteCommitment, Commitment]] = {}
        self._deadlines_cache: tuple[tuple[Any, ...], list[tuple[int, str, GoOnChain]]] | None = (
            None)

    # -- channel data ---------------------------------------------------------------------

    @property
    def close_seen(self) -> bool:
        """A spend of the funding output has confirmed (it may have left the chain
        since): the commitments it is resolved against are frozen from then on."""
        funding = self.static.funding_outpoint
        return any(txin.outpoint == funding for tx in self.seen.values() for txin in tx.inputs)

    def set_local_commitment(self, commitment: LocalCommitment) -> None:
        """Our latest commitment. Ignored once a close was seen: the commitment that
        confirmed must stay the one resolved (after a reorg too), and a state
        machine still updating after the funding output was spent is stale."""
        if not self.close_seen:
            self.local = commitment

    def set_remote_commitments(self, commitments: Sequence[RemoteCommitment]) -> None:
        """The peer's unrevoked commitments (replaces the previous set). Ignored once
        a close was seen, as ``set_local_commitment``."""
        if not self.close_seen:
            self.remotes = {c.commitment_number: c for c in commitments}

    def add_revoked_commitment(self, record: RevokedCommitment) -> None:
        self.revoked[record.txid] = record
        self.remotes.pop(record.commitment_number, None)

    def add_preimage(self, preimage: bytes) -> None:
        self.preimages[hashlib.sha256(preimage).digest()] = preimage

    def set_feerate(self, feerate_per_kw: int) -> None:
        """The estimator's rate for new claims (the floor applies)."""
        self.feerate_per_kw = max(feerate_per_kw, self.config.min_feerate_per_kw)

    # -- the chain ------------------------------------------------------------------------

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> list[WatchOutput]:
        return self.chain_updated((), [(height, block_hash, txs)])

    def block_disconnected(self, height: int, block_hash: str) -> list[WatchOutput]:
        return self.chain_updated([(height, block_hash)], ())

    def poll(self) -> list[WatchOutput]:
        """Re-evaluate at the current tip (after new channel data or a new feerate)."""
        return self._evaluate()

    def chain_updated(
        self,
        disconnected: Sequence[tuple[int, str]],
        connected: Sequence[tuple[int, str, Sequence[Tx]]],
    ) -> list[WatchOutput]:
        """One sync step: blocks disconnected (tip first), then connected (ascending).
        A connect at or below the tip implies the blocks from there were disconnected."""
        for height, _ in disconnected:
            self._drop_from(height)
            self.tip_height, self.tip_hash = height - 1, ""
        for height, block_hash, txs in connected:
            self._drop_from(height)
            relevant = self._relevant(txs)
            if relevant:
                self.blocks[height] = (block_hash, relevant)
            self.tip_height, self.tip_hash = height, block_hash
        return self._evaluate()

    def _drop_from(self, height: int) -> None:
        for h in [h for h in self.blocks if h >= height]:
            del self.blocks[h]

    def _levels(self) -> dict[bytes, int]:
        funding = self.static.funding_outpoint
        levels: dict[bytes, int] = {}
        for _, (_, kept) in sorted(self.blocks.items()):
            for k in kept:
                levels[k.txid] = self._level(k.tx, levels, funding, False, k.txid)
        return levels

    def interest(self) -> tuple[OutPoint, bytes | None, set[bytes]]:
        """What makes a transaction matter to this watch, for a pre-filter over many
        channels (``WatchSet``): spending the funding outpoint; being the funding tx
        (its txid while it is not kept); spending an output of a kept transaction
        whose spends are followed (these txids)."""
        levels = self._levels()
        funding = self.static.funding_outpoint
        awaited = None if funding.txid in levels else funding.txid
        return funding, awaited, {txid for txid, level in levels.items() if 1 <= level <= 2}

    def _relevant(self, txs: Sequence[Tx]) -> list[KeptTx]:
        funding = self.static.funding_outpoint
        levels = self._levels()
        # Hashing every transaction of every block for every channel is the cost of a
        # watch: only while the funding tx is not kept is a txid compared.
        look_for_funding = funding.txid not in levels
        kept = []
        for tx in txs:
            level = self._level(tx, levels, funding, look_for_funding)
            if level >= 0:
                k = KeptTx.of(tx)
                levels[k.txid] = level
                kept.append(k)
                if level <= 1:
                    self.seen[k.txid] = tx
        return kept

    @staticmethod
    def _level(tx: Tx, levels: dict[bytes, int], funding: OutPoint,
               look_for_funding: bool, txid: bytes | None = None) -> int:
        """0 funding tx, 1 its spend, 2 and 3 the spends below; -1 not ours."""
        if (txid or (tx.txid() if look_for_funding else None)) == funding.txid:
            return 0
        best = -1
        for txin in tx.inputs:
            if txin.outpoint == funding:
                return 1
            parent = levels.get(txin.outpoint.txid)
            if parent is not None and 1 <= parent <= 2:
                best = max(best, parent + 1)
        return best

    # -- evaluation -----------------------------------------------------------------------

    def _local_data(self) -> LocalData | None:
        local = self.local
        if local is None:
            return None
        if self._local_cache is not None and self._local_cache[0] is local:
            return self._local_cache[1]
        static, secrets = self.static, self.secrets
        point = secrets.per_commitment_point(local.commitment_number)
        c = build_commitment(static, Side.LOCAL, local.commitment_number, point,
                             local.local_msat, local.remote_msat, local.htlcs,
                             local.feerate_per_kw)
        finalizers: dict[int, Callable[[bytes | None], Tx]] = {
            index: functools.partial(finalize_holder_htlc_tx, static, secrets, c, index, sig)
            for (index, _), sig in zip(c.htlc_outputs, local.remote_htlc_signatures,
                                       strict=True)
        }
        data = LocalData(c, finalizers)
        self._local_cache = (local, data)
        return data

    def _deadlines(self, local: LocalData | None,
                   remotes: list[Commitment]) -> list[tuple[int, str, GoOnChain]]:
        # Keyed by the very objects (kept alive by the key), compared by identity:
        # the builders' caches hand back the same ones while the data is unchanged.
        key = (len(self.preimages), local, *remotes)
        cached = self._deadlines_cache
        if cached is None or len(cached[0]) != len(key) or cached[0][0] != key[0] or any(
                a is not b for a, b in zip(cached[0][1:], key[1:], strict=True)):
            cached = (key, htlc_deadlines(local, remotes, self.preimages, self.config))
            self._deadlines_cache = cached
        return cached[1]

    def local_commitment_tx(self) -> Tx | None:
        """Our latest commitment, fully signed: what ``Channel.fail()`` broadcasts, for
        a driver that has the watch's state but lost the channel's."""
        data = self._local_data()
        if data is None or self.local is None:
            return None
        return finalize_holder_commitment(self.static, self.secrets, data.commitment,
                                          self.local.remote_commitment_signature)

    def _remote_built(self) -> list[Commitment]:
        built = []
        for number, r in sorted(self.remotes.items()):
            cached = self._remote_cache.get(number)
            if cached is None or cached[0] is not r:
                c = build_commitment(self.static, Side.REMOTE, r.commitment_number,
                                     r.per_commitment_point, r.local_msat, r.remote_msat,
                                     r.htlcs, r.feerate_per_kw)
                cached = (r, c)
                self._remote_cache[number] = cached
            built.append(cached[1])
        return built

    def _revoked_for(self, txid: bytes) -> RevokedCommitment | None:
        record = self.revoked.get(txid)
        if record is None and self.revoked_lookup is not None:
            record = self.revoked_lookup(txid)
        return record

    def _secret_for(self, commitment_number: int) -> bytes | None:
        try:
            return self.revocations.get_commitment_secret(commitment_number)
        except ShachainError:
            return None

    def _evaluate(self) -> list[WatchOutput]:
        chain = ChainView((h, txs) for h, (_, txs) in self.blocks.items())
        local, remotes = self._local_data(), self._remote_built()
        resolution = Resolver(
            self.static, self.secrets, self.config, self.destination_script_pubkey,
            self.tip_height, chain, local, remotes, self._revoked_for, self._secret_for,
            self.preimages, self._deadlines(local, remotes),
        ).resolve()
        claims = list(resolution.claims)
        # A funding tx or funding spend that confirmed and left the chain: send again.
        for txid, tx in self.seen.items():
            if txid in chain.by_txid:
                continue
            is_funding = txid == self.static.funding_outpoint.txid
            if not is_funding and self.static.funding_outpoint in chain.spent_by:
                continue  # another spend of the funding output holds now
            claims.append(Claim("funding" if is_funding else "closing", self.tip_height,
                                self.tip_height + URGENT_CLAIM_BLOCKS, presigned=tx))
        events = dict(resolution.events)
        broadcasts = self._price(claims, chain, events)
        self._resolved(resolution, events)
        return self._diff(events) + broadcasts

    def _resolved(self, resolution: Resolution, events: dict[str, WatchEvent]) -> None:
        """``ChannelResolved`` once the close holds nothing more for us: no claim left
        (one left as uneconomical counts as done), no HTLC output open, and the last
        transaction that settled one of ours (``Resolution.settled_height``) is
        ``ANTI_REORG_DELAY`` deep."""
        close = events.get("closed")
        if not isinstance(close, ChannelClosedOnChain) or resolution.waiting or any(
                f"uneconomical:{c.key}" not in events for c in resolution.claims):
            return
        last = resolution.settled_height
        if self.tip_height - last + 1 >= ANTI_REORG_DELAY:
            events["resolved"] = ChannelResolved(close.txid, last + ANTI_REORG_DELAY - 1)

    def closed_on_chain(self) -> ChannelClosedOnChain | None:
        """The close reported and holding now (None before it, or after a reorg took it)."""
        event = self.reported.get("closed")
        return event if isinstance(event, ChannelClosedOnChain) else None

    def resolved_on_chain(self) -> ChannelResolved | None:
        """The ``ChannelResolved`` reported and holding now."""
        event = self.reported.get("resolved")
        return event if isinstance(event, ChannelResolved) else None

    def _price(self, claims: list[Claim], chain: ChainView,
               events: dict[str, WatchEvent]) -> list[WatchOutput]:
        out: list[WatchOutput] = []
        announced: dict[str, bytes] = {}
        base = self.feerate_per_kw
        for claim in claims:
            if claim.valid_height > self.tip_height:
                continue
            if any(o in chain.spent_by for o in claim.outpoints) and claim.presigned is not None:
                continue  # a presigned tx whose input a confirmed tx spent
            key = claim.key
            sent = self.sent.get(key)
            tx = self._signed(claim, sent, target_feerate(base, claim.deadline_height,
                                                         self.tip_height))
            if tx is None:
                events[f"uneconomical:{key}"] = ClaimUneconomical(claim.label, claim.amount_sat,
                                                                  base)
                continue
            txid = tx.txid()
            previous = self.announced.get(key)
            if previous != txid:
                out.append(Broadcast(tx, claim.deadline_height, claim.label, previous))
            announced[key] = txid
        self.announced = announced
        return out

    def _signed(self, claim: Claim, sent: _Sent | None, target: int) -> Tx | None:
        if claim.presigned is not None:
            return claim.presigned
        if sent is not None and target < min_replacement_feerate(sent.feerate_per_kw):
            return sent.tx
        for feerate in (target, self.feerate_per_kw, self.config.min_feerate_per_kw):
            if sent is not None and feerate < min_replacement_feerate(sent.feerate_per_kw):
                return sent.tx  # the best we can pay does not beat what is out there
            try:
                tx = sign_claim(claim, self.destination_script_pubkey, feerate)
            except TransactionError:
                continue  # the fee leaves dust: try a lower rate
            self.sent[claim.key] = _Sent(tx, feerate)
            return tx
        return None

    def _diff(self, events: dict[str, WatchEvent]) -> list[WatchOutput]:
        out: list[WatchOutput] = []
        # An event gone, or changed (the same close confirmed at another height after
        # a reorg), is reversed before its new form is reported.
        for key in [k for k in self.reported if events.get(k) != self.reported[k]]:
            event = self.reported[key]
            if isinstance(event, STICKY_EVENTS):
                continue
            del self.reported[key]
            out.append(Reversed(event))
        for key, event in events.items():
            if key not in self.reported:
                self.reported[key] = event
                out.append(event)
        return out

    # -- persistence -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The watch's state as plain JSON (no secret: the channel secrets and the
        revocation store are passed again to ``from_json``)."""
        return {
            "version": codec.VERSION,
            "static": codec.static_to_json(self.static),
            "destination_script_pubkey": self.destination_script_pubkey.hex(),
            "config": codec.config_to_json(self.config),
            "tip_height": self.tip_height,
            "tip_hash": self.tip_hash,
            "feerate_per_kw": self.feerate_per_kw,
            "local": None if self.local is None else codec.local_to_json(self.local),
            "remotes": [codec.remote_to_json(r) for r in self.remotes.values()],
            "revoked": [codec.revoked_to_json(r) for r in self.revoked.values()],
            "preimages": [p.hex() for p in self.preimages.values()],
            "blocks": [[h, block_hash, [k.tx.serialize().hex() for k in kept]]
                       for h, (block_hash, kept) in sorted(self.blocks.items())],
            "seen": [tx.serialize().hex() for tx in self.seen.values()],
            "sent": {k: [s.tx.serialize().hex(), s.feerate_per_kw] for k, s in self.sent.items()},
            "announced": {k: v.hex() for k, v in self.announced.items()},
            "reported": {k: codec.event_to_json(e) for k, e in self.reported.items()},
        }

    @classmethod
    def from_json(
        cls, data: dict[str, Any], secrets: ChannelSecrets, revocations: RevocationStore,
        revoked_lookup: Callable[[bytes], RevokedCommitment | None] | None = None,
    ) -> ChannelWatch:
        """Inverse of ``to_json`` (the live inputs passed again, as to the
        constructor); raises ValueError on malformed data."""
        try:
            if data.get("version") != codec.VERSION:
                raise ValueError(f"unsupported watch state version {data.get('version')!r}")
            watch = cls(codec.static_from_json(data["static"]), secrets, revocations,
                        bytes.fromhex(data["destination_script_pubkey"]),
                        config=codec.config_from_json(data["config"]),
                        tip_height=int(data["tip_height"]), revoked_lookup=revoked_lookup)
            watch.tip_hash = str(data["tip_hash"])
            watch.feerate_per_kw = int(data["feerate_per_kw"])
            if data["local"] is not None:
                watch.local = codec.local_from_json(data["local"])
            remotes = [codec.remote_from_json(r) for r in data["remotes"]]
            watch.remotes = {r.commitment_number: r for r in remotes}
            for r in data["revoked"]:
                record = codec.revoked_from_json(r)
                watch.revoked[record.txid] = record
            for p in data["preimages"]:
                watch.add_preimage(bytes.fromhex(p))
            for h, block_hash, txs in data["blocks"]:
                watch.blocks[int(h)] = (str(block_hash), [KeptTx.of(codec.tx(t)) for t in txs])
            for raw in data["seen"]:
                tx = codec.tx(raw)
                watch.seen[tx.txid()] = tx
            watch.sent = {k: _Sent(codec.tx(v[0]), int(v[1])) for k, v in data["sent"].items()}
            watch.announced = {k: bytes.fromhex(v) for k, v in data["announced"].items()}
            watch.reported = {k: codec.event_from_json(e) for k, e in data["reported"].items()}
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"malformed watch state: {exc!r}") from exc
        return watch
