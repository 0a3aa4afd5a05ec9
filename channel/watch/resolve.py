"""From the confirmed transactions that touch a channel to its claims and events
(BOLT #5), as one pure function of the chain as it is now.

Theory of operation. ``ChainView`` indexes the confirmed transactions the watch
kept (the funding transaction, the spend of the funding output, the spends of that
commitment's outputs and of their outputs). ``resolve`` reads it from the funding
output down and returns every event that holds on this chain and every claim not
yet resolved on it. Nothing is remembered between two calls: after a reorg the
answer is simply recomputed, so a transaction that left the chain is claimed again
and an event whose block left is no longer derived (the watch reverses it).

Which commitment spent the funding output decides the case (BOLT #5):
- ours ("local"): to_local after to_self_delay; HTLC-timeout from cltv_expiry,
  HTLC-success when we know the preimage; their outputs after to_self_delay;
- the peer's unrevoked one ("remote"): to_remote at once; HTLCs it offered by
  preimage, ours after cltv_expiry;
- a revoked one ("revoked"): every output with the revocation key, batched and
  split under the weight limit; the output of any HTLC-success/timeout the cheater
  confirms first, before its delay;
- another commitment ("unknown", e.g. after data loss): to_remote only (static
  remote key needs no per-commitment point);
- anything else is a cooperative close.
An output we could claim that the peer spent is reported lost, and a preimage found
in the peer's witness for an HTLC we offered is reported learned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from channel.commitment import (
    ChannelStatic,
    Commitment,
    CommitmentHtlc,
    Side,
    commitment_number_from_tx,
)
from channel.errors import ChannelError, TransactionError
from channel.keys import ChannelSecrets
from channel.penalty import revoked_commitment_outputs, revoked_second_stage_outputs
from channel.spend import SpendableOutput
from channel.sweep import own_delayed_output, remote_htlc_claim_outputs, to_remote_output
from channel.tx import OutPoint, Tx
from channel.watch.claims import Claim, split_by_weight
from channel.watch.types import (
    ANTI_REORG_DELAY,
    RELAXED_DEADLINE_BLOCKS,
    URGENT_CLAIM_BLOCKS,
    ChannelClosedOnChain,
    ClaimBuried,
    ClaimConfirmed,
    FundingConfirmed,
    FundingDepthReached,
    GoOnChain,
    OutputLost,
    PreimageLearned,
    RevokedCommitment,
    WatchConfig,
    WatchEvent,
)


@dataclass(frozen=True, slots=True)
class KeptTx:
    """A transaction the watch keeps, with its txid computed once: a commitment with
    a thousand HTLC outputs takes milliseconds to hash, and every evaluation needs it."""

    txid: bytes
    tx: Tx

    @classmethod
    def of(cls, tx: Tx) -> KeptTx:
        return cls(tx.txid(), tx)


@dataclass(frozen=True, slots=True)
class Confirmed:
    tx: Tx
    height: int
    txid: bytes

    def txid_hex(self) -> str:
        return self.txid[::-1].hex()


class ChainView:
    """The confirmed channel transactions: by txid, and which one spends an outpoint."""

    def __init__(self, blocks: Iterable[tuple[int, list[KeptTx]]]) -> None:
        self.by_txid: dict[bytes, Confirmed] = {}
        self.spent_by: dict[OutPoint, Confirmed] = {}
        for height, kept in sorted(blocks, key=lambda b: b[0]):
            for k in kept:
                c = Confirmed(k.tx, height, k.txid)
                self.by_txid[k.txid] = c
                for txin in k.tx.inputs:
                    self.spent_by[txin.outpoint] = c


@dataclass(frozen=True)
class LocalData:
    """Our latest commitment, built: what resolving our own close needs."""

    commitment: Commitment
    htlc_txs: dict[int, Callable[[bytes | None], Tx]]  # output index -> finalizer


@dataclass
class Resolution:
    events: dict[str, WatchEvent] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    closed: bool = False
    # An HTLC output of the close is unspent with no claim of ours (we lack its
    # preimage): the peer may time it out, or a preimage learned later claims it.
    waiting: bool = False
    # The height of the last transaction that settled an output of ours (or the close
    # itself): ``ChannelResolved`` counts its depth from there. The peer's own sweeps
    # of its outputs do not count.
    settled_height: int = 0

    def event(self, key: str, event: WatchEvent) -> None:
        self.events.setdefault(key, event)


def is_commitment_shaped(tx: Tx) -> bool:
    """BOLT #3: a commitment's locktime starts 0x20 and its sequence 0x80."""
    return (len(tx.inputs) == 1 and tx.locktime >> 24 == 0x20
            and tx.inputs[0].sequence >> 24 == 0x80)


def htlc_deadlines(
    local: LocalData | None, remotes: Iterable[Commitment], preimages: dict[bytes, bytes],
    config: WatchConfig,
) -> list[tuple[int, str, GoOnChain]]:
    """BOLT #2 "cltv_expiry_delta Selection": when to go on chain for each HTLC still
    in a commitment: one we offered ``grace`` blocks after its expiry, one we can
    fulfill ``deadline`` blocks before its expiry (the preimage must confirm before
    the peer can time it out). Sorted by height; HTLCs trimmed from every commitment
    have no output to go on chain for. Computed when the channel data changes, not
    per block."""
    htlcs: dict[tuple[str, int], CommitmentHtlc] = {}
    for c in ([local.commitment] if local is not None else []) + list(remotes):
        for _, h in c.htlc_outputs:
            htlcs[(h.offered_by.value, h.htlc_id)] = h
    found = []
    for (side, htlc_id), h in sorted(htlcs.items()):
        ours = h.offered_by is Side.LOCAL
        if ours:
            deadline = h.cltv_expiry + config.offered_htlc_grace_blocks
        elif h.payment_hash in preimages:
            deadline = h.cltv_expiry - config.fulfilled_htlc_deadline_blocks
        else:
            continue
        found.append((deadline, f"go_on_chain:{side}:{htlc_id}",
                      GoOnChain(ours, htlc_id, h.payment_hash, deadline)))
    found.sort(key=lambda d: (d[0], d[1]))
    return found


@dataclass
class Resolver:
    static: ChannelStatic
    secrets: ChannelSecrets
    config: WatchConfig
    destination_script_pubkey: bytes
    tip_height: int
    chain: ChainView
    local: LocalData | None
    remotes: list[Commitment]
    revoked_for: Callable[[bytes], RevokedCommitment | None]  # by txid
    secret_for: Callable[[int], bytes | None]
    preimages: dict[bytes, bytes]  # payment hash -> preimage
    deadlines: list[tuple[int, str, GoOnChain]]  # htlc_deadlines(), by height
    out: Resolution = field(default_factory=Resolution)

    # -- helpers -------------------------------------------------------------------------

    def is_ours(self, tx: Tx) -> bool:
        return bool(tx.outputs) and all(
            o.script_pubkey == self.destination_script_pubkey for o in tx.outputs
        )

    def confirmed_ours(self, spender: Confirmed, label: str) -> None:
        self.out.settled_height = max(self.out.settled_height, spender.height)
        self.out.event(f"claim:{spender.txid_hex()}", ClaimConfirmed(
            label, spender.txid, spender.height, sum(o.amount_sat for o in spender.tx.outputs)))
        if self.tip_height - spender.height + 1 >= ANTI_REORG_DELAY:
            self.out.event(f"buried:{spender.txid_hex()}", ClaimBuried(
                label, spender.txid, spender.height, spender.height + ANTI_REORG_DELAY - 1))

    def lost(self, spender: Confirmed, label: str) -> None:
        self.out.settled_height = max(self.out.settled_height, spender.height)
        self.out.event(f"lost:{spender.txid_hex()}:{label}",
                       OutputLost(label, spender.txid, spender.height))

    def scan_preimages(self, spender: Confirmed, htlcs: Iterable[CommitmentHtlc]) -> None:
        """BOLT #5: extract the preimage of an HTLC we offered from the peer's claim."""
        ours = {h.payment_hash for h in htlcs if h.offered_by is Side.LOCAL}
        for txin in spender.tx.inputs:
            for item in txin.witness:
                if len(item) != 32:
                    continue
                payment_hash = hashlib.sha256(item).digest()
                if payment_hash in ours:
                    self.out.event(
                        f"preimage:{payment_hash.hex()}",
                        PreimageLearned(payment_hash, item, spender.txid, spender.height),
                    )

    def claim(self, label: str, valid_height: int, deadline_height: int,
              inputs: Iterable[SpendableOutput] = (), locktime: int = 0,
              presigned: Tx | None = None) -> None:
        self.out.claims.append(Claim(label, valid_height, deadline_height, tuple(inputs),
                                     locktime, presigned))

    def delayed_claim(self, output: SpendableOutput, confirmed_height: int, delay: int,
                      label: str) -> None:
        """An output spendable by us alone once ``delay`` blocks have passed."""
        valid = confirmed_height + delay - 1
        self.claim(label, valid, valid + RELAXED_DEADLINE_BLOCKS, [output])

    # -- the entry point -----------------------------------------------------------------

    def resolve(self) -> Resolution:
        funding = self.static.funding_outpoint
        found = self.chain.by_txid.get(funding.txid)
        if found is not None:
            self.out.event("funding_confirmed", FundingConfirmed(funding.txid, found.height))
            if self.tip_height - found.height + 1 >= self.config.minimum_depth:
                self.out.event("funding_depth", FundingDepthReached(
                    funding.txid, found.height + self.config.minimum_depth - 1))
        spender = self.chain.spent_by.get(funding)
        if spender is None:
            self.stuck_htlcs()
        else:
            self.out.closed = True
            self.out.settled_height = max(self.out.settled_height, spender.height)
            self.closed(spender)
        return self.out

    def stuck_htlcs(self) -> None:
        for deadline, key, event in self.deadlines:
            if self.tip_height < deadline:
                break
            self.out.event(key, event)

    def closed(self, spender: Confirmed) -> None:
        tx, height, txid = spender.tx, spender.height, spender.txid
        number = commitment_number_from_tx(self.static, tx) if is_commitment_shaped(tx) else -1

        def report(kind: str) -> None:
            self.out.event("closed", ChannelClosedOnChain(txid, height, kind, number))

        if self.local is not None and self.local.commitment.txid == txid:
            report("local")
            self.local_close(spender, self.local)
            return
        for remote in self.remotes:
            if remote.txid == txid:
                report("remote")
                self.remote_close(spender, remote)
                return
        if number < 0:
            report("cooperative")
            return
        if self.revoked_close(spender, number):
            report("revoked")
            return
        report("unknown")
        self.to_remote(spender)

    # -- the cases ------------------------------------------------------------------------

    def to_remote(self, spender: Confirmed) -> None:
        try:
            output = to_remote_output(self.static, self.secrets, spender.tx)
        except TransactionError:
            return  # none (ours was dust, or we had nothing)
        taken = self.chain.spent_by.get(output.outpoint)
        if taken is not None:
            self.confirmed_ours(taken, "to_remote")
            return
        self.claim("to_remote", spender.height, spender.height + RELAXED_DEADLINE_BLOCKS,
                   [output])

    def own_output(self, output: SpendableOutput, confirmed_height: int, delay: int,
                   label: str) -> None:
        """A delayed output of our own close: swept by us, or (had we published a
        revoked state) taken by the peer with the revocation key, or still to claim."""
        taken = self.chain.spent_by.get(output.outpoint)
        if taken is None:
            self.delayed_claim(output, confirmed_height, delay, label)
        elif self.is_ours(taken.tx):
            self.confirmed_ours(taken, label)
        else:
            self.lost(taken, label)

    def local_close(self, spender: Confirmed, local: LocalData) -> None:
        c = local.commitment
        delay = self.static.remote.to_self_delay  # the peer's demand on our outputs
        n = c.commitment_number
        if c.to_local_index is not None:
            output = own_delayed_output(self.static, self.secrets, spender.tx, n, "to_local")
            self.own_output(output, spender.height, delay, "to_local")
        htlcs = [h for _, h in c.htlc_outputs]
        for index, h in c.htlc_outputs:
            ours_offered = h.offered_by is Side.LOCAL
            label = f"htlc_{'timeout' if ours_offered else 'success'} {h.htlc_id}"
            taken = self.chain.spent_by.get(OutPoint(c.txid, index))
            if taken is not None:
                second = taken.tx
                if (len(second.inputs) == 1 and len(second.outputs) == 1
                        and second.outputs[0].script_pubkey == c.second_stage_script_pubkey):
                    self.confirmed_ours(taken, label)
                    out = own_delayed_output(self.static, self.secrets, second, n, "second_stage")
                    self.own_output(out, taken.height, delay, f"second_stage {h.htlc_id}")
                else:
                    self.lost(taken, label)
                    self.scan_preimages(taken, htlcs)
                continue
            finalize = local.htlc_txs[index]
            if ours_offered:
                self.claim(label, h.cltv_expiry, h.cltv_expiry + URGENT_CLAIM_BLOCKS,
                           presigned=finalize(None))
            else:
                preimage = self.preimages.get(h.payment_hash)
                if preimage is None:
                    self.out.waiting = True
                else:
                    # The peer may time it out from cltv_expiry: confirm before.
                    self.claim(label, spender.height, h.cltv_expiry - 1,
                               presigned=finalize(preimage))

    def remote_close(self, spender: Confirmed, c: Commitment) -> None:
        self.to_remote(spender)
        htlcs = [h for _, h in c.htlc_outputs]
        point = c.per_commitment_point
        for index, h in c.htlc_outputs:
            ours_offered = h.offered_by is Side.LOCAL
            label = f"htlc_{'timeout' if ours_offered else 'preimage'} {h.htlc_id}"
            taken = self.chain.spent_by.get(OutPoint(c.txid, index))
            if taken is not None:
                if self.is_ours(taken.tx):
                    self.confirmed_ours(taken, label)
                else:
                    self.lost(taken, label)
                    self.scan_preimages(taken, htlcs)
                continue
            if ours_offered:
                inputs, locktime = remote_htlc_claim_outputs(
                    self.static, self.secrets, spender.tx, point, [(index, h, None)])
                self.claim(label, h.cltv_expiry, h.cltv_expiry + URGENT_CLAIM_BLOCKS,
                           inputs, locktime)
            else:
                preimage = self.preimages.get(h.payment_hash)
                if preimage is None:
                    self.out.waiting = True
                    continue
                inputs, locktime = remote_htlc_claim_outputs(
                    self.static, self.secrets, spender.tx, point, [(index, h, preimage)])
                self.claim(label, spender.height, h.cltv_expiry - 1, inputs, locktime)

    def revoked_close(self, spender: Confirmed, number: int) -> bool:
        """BOLT #5 "Revoked Transaction Close Handling". False if ``spender`` is not a
        revoked commitment of the peer's (no secret, or nothing revocable with it)."""
        secret = self.secret_for(number)
        if secret is None:
            return False
        tx = spender.tx
        record = self.revoked_for(spender.txid)
        outputs: list[SpendableOutput] | None = None
        for htlc_outputs in ((record.htlc_outputs,) if record is not None else ()) + ((),):
            try:
                outputs = revoked_commitment_outputs(
                    self.static, self.secrets, tx, secret, htlc_outputs)
                break
            except ChannelError:
                continue
        if outputs is None:
            return False
        htlcs = [h for _, h in record.htlc_outputs] if record is not None else []
        delay = self.static.local.to_self_delay  # our demand on the cheater's outputs
        deadline = spender.height + delay - 1
        # Groups are cut from all the outputs, then thinned to the unspent ones: an
        # output the cheater takes leaves the other groups as they were, so their
        # transactions in the mempool stay valid (a regrouped one would conflict with
        # them and pay less, and the node would refuse it as a replacement).
        for group in split_by_weight(outputs, self.destination_script_pubkey,
                                     self.config.max_tx_weight):
            unspent: list[SpendableOutput] = []
            for o in group:
                taken = self.chain.spent_by.get(o.outpoint)
                if taken is None:
                    unspent.append(o)
                elif self.is_ours(taken.tx):
                    self.confirmed_ours(taken, "penalty")
                else:
                    self.scan_preimages(taken, htlcs)
                    self.second_stage_penalty(taken, secret, delay)
            if unspent:
                self.claim("penalty", spender.height, deadline, unspent)
        self.to_remote(spender)
        return True

    def second_stage_penalty(self, second: Confirmed, secret: bytes, delay: int) -> None:
        try:
            outputs = revoked_second_stage_outputs(self.static, self.secrets, second.tx, secret)
        except TransactionError:
            return
        for o in outputs:
            taken = self.chain.spent_by.get(o.outpoint)
            if taken is None:
                self.claim("penalty_second_stage", second.height,
                           second.height + delay - 1, [o])
            elif self.is_ours(taken.tx):
                self.confirmed_ours(taken, "penalty_second_stage")
            else:
                self.lost(taken, "penalty_second_stage")
