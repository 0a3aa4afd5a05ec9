"""The update log: every HTLC and fee update and which commitments include it.

Theory of operation (BOLT #2 "Normal Operation"). An update is proposed by one side
(``origin``) and then enters the two commitment chains one after the other:

- our own updates enter the REMOTE commitment when we send ``commitment_signed``,
  and our LOCAL commitment when the peer, having revoked, signs one for us;
- the peer's updates enter our LOCAL commitment with its ``commitment_signed``, and
  the REMOTE commitment with the next ``commitment_signed`` we send after revoking.

So each update carries a ``Mark``: the commitment number of the first LOCAL and the first
REMOTE commitment that includes it (None while not yet). The content of any commitment
``(owner, n)`` is then "every update whose mark for ``owner`` is <= n", applied to the
base balances in log order. Once an HTLC's removal is in our current LOCAL commitment
and in the peer's oldest unrevoked commitment, no commitment we can ever build again
shows it: it is folded into the base balances (``prune``), which keeps the log as short
as the in-flight set.

A disconnect forgets every update not yet covered by a ``commitment_signed`` (BOLT #2:
"MUST reverse any uncommitted updates sent by the other side" and the peer does the
same with ours): ``revert_uncommitted``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from channel.commitment import CommitmentHtlc, Side

LOCAL = Side.LOCAL
REMOTE = Side.REMOTE


@dataclass(slots=True)
class Mark:
    """Who proposed an update, its place in the message order, and the first LOCAL /
    REMOTE commitment numbers that include it."""

    origin: Side
    seq: int
    local_ctn: int | None = None
    remote_ctn: int | None = None

    def ctn(self, owner: Side) -> int | None:
        return self.local_ctn if owner is LOCAL else self.remote_ctn

    def set_ctn(self, owner: Side, ctn: int) -> None:
        if owner is LOCAL:
            self.local_ctn = ctn
        else:
            self.remote_ctn = ctn


@dataclass(slots=True)
class Removal:
    """update_fulfill_htlc (preimage set) or update_fail_htlc (reason set)."""

    mark: Mark
    preimage: bytes | None = None
    reason: bytes = b""

    @property
    def fulfilled(self) -> bool:
        return self.preimage is not None


@dataclass(slots=True)
class Htlc:
    offered_by: Side
    htlc_id: int
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int
    onion: bytes
    add: Mark
    removal: Removal | None = None
    # Set when a peer's add broke our local policy (protocol.rules.policy_problem): it is
    # failed back as soon as it is irrevocably committed instead of being reported.
    policy_failure: str = ""

    def as_commitment_htlc(self) -> CommitmentHtlc:
        return CommitmentHtlc(
            self.offered_by, self.htlc_id, self.amount_msat, self.payment_hash, self.cltv_expiry
        )


@dataclass(slots=True)
class FeeUpdate:
    feerate_per_kw: int
    mark: Mark


Pred = Callable[[Mark], bool]


def in_commitment(owner: Side, ctn: int) -> Pred:
    """Updates included in ``owner``'s commitment number ``ctn``."""

    def pred(m: Mark) -> bool:
        c = m.ctn(owner)
        return c is not None and c <= ctn

    return pred


def everything(m: Mark) -> bool:
    return True


@dataclass(slots=True)
class View:
    """Balances (HTLCs excluded, before fee), in-flight HTLCs and feerate of one view."""

    local_msat: int
    remote_msat: int
    htlcs: list[Htlc]
    feerate_per_kw: int

    def balance(self, side: Side) -> int:
        return self.local_msat if side is LOCAL else self.remote_msat

    def offered(self, side: Side) -> list[Htlc]:
        return [h for h in self.htlcs if h.offered_by is side]


@dataclass(slots=True)
class Book:
    """Base balances and feerate plus every live update; see the module docstring."""

    local_base_msat: int
    remote_base_msat: int
    base_feerate_per_kw: int
    htlcs: dict[tuple[Side, int], Htlc] = field(default_factory=dict)
    fee_updates: list[FeeUpdate] = field(default_factory=list)
    next_local_htlc_id: int = 0
    next_remote_htlc_id: int = 0
    next_seq: int = 0

    # -- proposing ---------------------------------------------------------------------

    def mark(self, origin: Side) -> Mark:
        self.next_seq += 1
        return Mark(origin, self.next_seq)

    def add_htlc(self, offered_by: Side, amount_msat: int, payment_hash: bytes,
                 cltv_expiry: int, onion: bytes) -> Htlc:
        htlc_id = self.next_local_htlc_id if offered_by is LOCAL else self.next_remote_htlc_id
        htlc = Htlc(offered_by, htlc_id, amount_msat, payment_hash, cltv_expiry, onion,
                    self.mark(offered_by))
        self.htlcs[(offered_by, htlc_id)] = htlc
        if offered_by is LOCAL:
            self.next_local_htlc_id += 1
        else:
            self.next_remote_htlc_id += 1
        return htlc

    def remove_htlc(self, htlc: Htlc, preimage: bytes | None, reason: bytes) -> None:
        htlc.removal = Removal(self.mark(htlc.offered_by.other()), preimage, reason)

    def update_fee(self, origin: Side, feerate_per_kw: int) -> None:
        self.fee_updates.append(FeeUpdate(feerate_per_kw, self.mark(origin)))

    # -- marks -------------------------------------------------------------------------

    def marks(self) -> Iterator[Mark]:
        for h in self.htlcs.values():
            yield h.add
            if h.removal is not None:
                yield h.removal.mark
        for f in self.fee_updates:
            yield f.mark

    def commit(self, owner: Side, ctn: int, eligible: Pred) -> None:
        """Put every eligible update not yet in ``owner``'s chain into commitment
        ``ctn``."""
        for m in self.marks():
            if m.ctn(owner) is None and eligible(m):
                m.set_ctn(owner, ctn)

    def pending(self, owner: Side, eligible: Pred) -> bool:
        return any(m.ctn(owner) is None and eligible(m) for m in self.marks())

    # -- views -------------------------------------------------------------------------

    def view(self, include: Pred) -> View:
        local_msat, remote_msat = self.local_base_msat, self.remote_base_msat
        live: list[Htlc] = []
        for h in self.htlcs.values():
            if not include(h.add):
                continue
            if h.offered_by is LOCAL:
                local_msat -= h.amount_msat
            else:
                remote_msat -= h.amount_msat
            r = h.removal
            if r is not None and include(r.mark):
                if r.fulfilled == (h.offered_by is LOCAL):
                    remote_msat += h.amount_msat  # fulfilled ours / failed theirs
                else:
                    local_msat += h.amount_msat
            else:
                live.append(h)
        feerate = self.base_feerate_per_kw
        for f in self.fee_updates:
            if include(f.mark):
                feerate = f.feerate_per_kw
        return View(local_msat, remote_msat, live, feerate)

    def max_feerate(self) -> int:
        return max([self.base_feerate_per_kw, *(f.feerate_per_kw for f in self.fee_updates)])

    # -- forgetting ----------------------------------------------------------------------

    def prune(self, local_ctn: int, remote_oldest_ctn: int) -> list[Htlc]:
        """Fold every update no future commitment can leave out into the base state.

        Returns the HTLCs removed from the log (the caller reports failures)."""
        settled = in_commitment(LOCAL, local_ctn)
        settled_remote = in_commitment(REMOTE, remote_oldest_ctn)

        def done(m: Mark) -> bool:
            return settled(m) and settled_remote(m)

        gone: list[Htlc] = []
        for key, h in list(self.htlcs.items()):
            r = h.removal
            if r is not None and done(r.mark) and done(h.add):
                if r.fulfilled:  # a failed HTLC leaves both balances as they were
                    if h.offered_by is LOCAL:
                        self.local_base_msat -= h.amount_msat
                        self.remote_base_msat += h.amount_msat
                    else:
                        self.remote_base_msat -= h.amount_msat
                        self.local_base_msat += h.amount_msat
                del self.htlcs[key]
                gone.append(h)
        last_done = -1
        for i, f in enumerate(self.fee_updates):
            if done(f.mark):
                last_done = i
        if last_done >= 0:
            self.base_feerate_per_kw = self.fee_updates[last_done].feerate_per_kw
            del self.fee_updates[: last_done + 1]
        return gone

    def revert_uncommitted(self) -> list[Htlc]:
        """Forget updates no commitment_signed covers yet (disconnect, restart).

        Returns our own HTLC adds that were forgotten (they were never offered)."""

        def uncommitted(m: Mark) -> bool:
            return (m.remote_ctn if m.origin is LOCAL else m.local_ctn) is None

        dropped: list[Htlc] = []
        for key, h in list(self.htlcs.items()):
            if uncommitted(h.add):
                del self.htlcs[key]
                if h.offered_by is LOCAL:
                    dropped.append(h)
                    self.next_local_htlc_id = min(self.next_local_htlc_id, h.htlc_id)
                else:
                    self.next_remote_htlc_id = min(self.next_remote_htlc_id, h.htlc_id)
            elif h.removal is not None and uncommitted(h.removal.mark):
                h.removal = None
        self.fee_updates = [f for f in self.fee_updates if not uncommitted(f.mark)]
        return dropped
