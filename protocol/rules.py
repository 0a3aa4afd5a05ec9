"""BOLT #2 acceptance rules: every check runs before anything is mutated (DESIGN rule 4).

Each ``*_problem`` function looks at the channel as it is and at a proposed change, and
returns None (acceptable) or a ``Problem``: a readable message plus what happens to the
channel if the PEER proposed it. The caller raises ``RemoteProtocolError`` for a received
message and ``LocalProtocolError`` for a command: the same rules bind both directions
(BOLT #2 states each rule twice, "a sending node MUST NOT" / "a receiving node SHOULD
fail"), so they are written once, for a ``sender`` side.

The views used (see ``protocol.book``):

- ``min_view(side)``: every update ``side`` proposed, plus the other side's updates that
  ``side`` has already acknowledged. The other side's unacknowledged updates can only
  raise ``side``'s balance (fail-backs of its HTLCs) or leave it alone, so this is the
  lowest balance ``side`` can have in any commitment still to be built;
- the fee bound: the commitment fee at the highest feerate known with every live HTLC as
  an output (``config.fee_upper_bound_sat``): no future commitment's fee exceeds it.

- the funder's floor (``funder_floor_msat``): the lowest balance the funder has in any
  commitment still to be built. A commitment holds the updates of the latest
  commitments plus a *prefix* (in send order) of each side's other updates, so the
  floor starts from what both latest commitments hold and walks the funder's own later
  updates, keeping the minimum (a fulfill of the funder's raises it only in the
  commitments that include it); the other side's updates only ever raise it.
- the HTLC set for fees: every HTLC in the book, ours the peer has not acknowledged
  included (they enter the next commitments too: issue 11, finding 2), at every
  feerate pending.

Keeping "funder's floor >= the fee of every commitment the book can produce" true after
every accepted change (adds from either side and fee updates: removals never lower it)
is what guarantees no commitment we will be asked to build or sign has a fee its funder
cannot pay. The receiver checks exactly, on its own book, its own adds the sender has
not seen included (issue 11): an add or update_fee of the funder's must leave it its
reserve and the fee, one of the other side's must leave it the fee. A sender checks with
the fee *bound* plus headroom for what may cross on the wire, so that an honest sender
never trips the receiver's check (a refused message fails the channel).

The headroom (issue 9). What crosses is the non-funder's adds, which the funder's own
add or update_fee did not count and the receiver does. So both sides keep one rule:

- the funder, after its add, keeps its reserve plus the larger of BOLT #2's fee spike
  buffer (``fee_spike_buffer_msat``: the fee at twice the highest feerate pending with
  every HTLC in the book, this one and one more) and the fee at the highest feerate with
  N HTLCs more than the book and this one (``funder_headroom_msat``). N
  (``crossing_htlcs``) is as many HTLCs (172 weight each) as 1/20 of its balance above
  its reserve pays for, at most the HTLCs it accepts from the other side; the balance
  is the one before its adds the other side has not acknowledged (the most the other
  side can think it has), the feerate the lowest it may know. After an update_fee it
  keeps the same with no add (BOLT's buffer with one HTLC more than the book);
- the non-funder keeps every HTLC of its book, its new add and one add of the funder's
  within what that headroom pays for (``crossing_problem``, ``covered_htlcs``): at
  most ``max(2 k + 8, k + 1 + N)`` HTLCs, k the HTLCs of the book the funder has
  acknowledged or offered and that are not being removed, N from the funder's floor
  as it sees it and its highest feerate. An add the funder sent before seeing ours
  left it this much, so when it reaches us, after our adds, our exact check holds; our
  adds reaching the funder after its own find it the fee (and the reserve) likewise.
  Over the limit our add is refused locally ("wait for its acknowledgement"): the next
  round trip raises k.

Figures (reserve 10,000 sat, defaults of hub and client; the most a funder of a new
channel can add, in sat; ``tests/protocol/test_fee_headroom.py``):

    channel  feerate  N (limit)  headroom  sends (limit 200)  forwards (limit 483)
    100,000      253     103       4,708       85,292              85,292
    100,000    2,500      10       6,540       83,460              83,460
    200,000      253  218 (200)    8,929       181,071             180,287 (N 218)
    200,000    2,500      22      11,700       178,300             178,300

BOLT's buffer alone would let it send 89,460 / 84,660 / 189,460 / 184,660; the rule
before kept the fee of every HTLC the peer might still add (483 at 2,500 sat/kw:
209,930 sat: nothing could be sent, and an 80,000 sat forward over a 100,000 sat channel
was refused). Against a funder of 600,000 sat at 2,500 sat/kw, N = 68: the hub can
put 68 forwards in flight on a channel its client funded before any is acknowledged.
With a poor funder N is small and BOLT's buffer binds: 100,000 sat at 20,000 sat/kw
leaves room for 7 of the other side's adds in flight (issue 11's crossing test needs 8:
an honest peer never sends them). A peer that is not ours may put more in flight than
this rule lets us; a race then fails the channel, as BOLT #2 accepts for its buffer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from channel.commitment import ChannelStatic, Side
from protocol.book import LOCAL, REMOTE, Book, Htlc, Mark, Pred, View
from protocol.commitments import is_trimmed
from protocol.config import (
    CLTV_EXPIRY_LOCKTIME_THRESHOLD,
    COMMITMENT_BASE_WEIGHT,
    FEE_CROSSING_SHARE_DIVISOR,
    FEE_SPIKE_EXTRA_HTLCS,
    FEE_SPIKE_FEERATE_MULTIPLE,
    HTLC_OUTPUT_WEIGHT,
    MAX_ACCEPTED_HTLCS_LIMIT,
    MAX_CLTV_EXPIRY_DELTA_BLOCKS,
    MAX_MONEY_SAT,
    MIN_CLTV_EXPIRY_MARGIN_BLOCKS,
    MIN_DUST_LIMIT_SAT,
    LocalConfig,
    fee_upper_bound_sat,
)
from protocol.errors import Disposition
from protocol.state import ChannelData, RemoteParams

CLOSE = Disposition.CLOSE
WARN = Disposition.WARN


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    disposition: Disposition = CLOSE
    # Our own add, refused only until the peer acknowledges what it has not yet: the
    # caller gets ``AwaitingAcknowledgement`` and may offer it again after that.
    until_acknowledged: bool = False


def min_view_pred(d: ChannelData, side: Side) -> Pred:
    """See the module docstring: ``side``'s updates plus those it acknowledged."""
    oldest = d.local_ctn if side is LOCAL else d.remote_oldest_ctn

    def pred(m: Mark) -> bool:
        if m.origin is side:
            return True
        c = m.ctn(side)
        return c is not None and c <= oldest

    return pred


def reserve_msat(d: ChannelData, side: Side) -> int:
    """The reserve ``side`` must keep: the one its peer demanded of it."""
    assert d.remote is not None
    return 1000 * (d.config.channel_reserve_sat if side is REMOTE else d.remote.channel_reserve_sat)


def funder(d: ChannelData) -> Side:
    return LOCAL if d.local_is_funder else REMOTE


def latest_pred(d: ChannelData) -> Pred:
    """Updates in both latest commitments (ours and the peer's last signed one): every
    commitment still to be built holds them."""
    local_ctn, remote_ctn = d.local_ctn, d.remote_ctn

    def pred(m: Mark) -> bool:
        return (m.local_ctn is not None and m.local_ctn <= local_ctn
                and m.remote_ctn is not None and m.remote_ctn <= remote_ctn)

    return pred


def funder_floor_msat(d: ChannelData) -> tuple[int, int]:
    """(floor, end): the lowest balance the funder has in any commitment still to be
    built from the book, and its balance once all its updates are in (see the module
    docstring). A further add of the funder's lowers both by its amount."""
    f = funder(d)
    book = d.book
    settled = latest_pred(d)
    balance = book.view(settled).balance(f)
    floor = balance
    mine: list[tuple[int, int]] = []  # (seq, balance change) of f's unsettled updates
    for h in book.htlcs.values():
        if h.offered_by is f and not settled(h.add):
            mine.append((h.add.seq, -h.amount_msat))
        r = h.removal
        if (r is not None and r.mark.origin is f and not settled(r.mark)
                and r.fulfilled and h.offered_by is not f):
            mine.append((r.mark.seq, h.amount_msat))  # f fulfilled the other's HTLC
    for _, change in sorted(mine):
        balance += change
        floor = min(floor, balance)
    return floor, balance


def feerates(book: Book, feerate_per_kw: int | None = None) -> list[int]:
    """Every feerate a commitment still to be built may have (or just ``feerate_per_kw``)."""
    if feerate_per_kw is not None:
        return [feerate_per_kw]
    return sorted({book.base_feerate_per_kw, *(f.feerate_per_kw for f in book.fee_updates)})


def worst_fee_msat(static: ChannelStatic, htlcs: list[Htlc], rates: list[int]) -> int:
    """The highest exact fee of either side's commitment with ``htlcs`` at any of
    ``rates``. The sides' dust limits differ, so an HTLC trimmed on one commitment is an
    output (and costs fee) on the other; the funder must pay both."""
    return max(_fee_both_msat(static, htlcs, rate) for rate in rates)


def fee_bound_msat(book: Book, extra_htlcs: int = 0, feerate_per_kw: int | None = None) -> int:
    feerate = book.max_feerate() if feerate_per_kw is None else max(book.max_feerate(),
                                                                     feerate_per_kw)
    return 1000 * fee_upper_bound_sat(feerate, len(book.htlcs) + extra_htlcs)


def fee_spike_buffer_msat(book: Book, extra_htlcs: int = 0,
                          feerate_per_kw: int | None = None) -> int:
    """BOLT #2's fee spike buffer (module docstring, ``config.FEE_SPIKE_*``): the fee
    bound at twice the highest feerate pending (or ``feerate_per_kw`` if higher) with
    every HTLC in the book, ``extra_htlcs`` more and one future HTLC. Never below the
    exact fee of any commitment the book can build with them."""
    feerate = book.max_feerate() if feerate_per_kw is None else max(book.max_feerate(),
                                                                     feerate_per_kw)
    return 1000 * fee_upper_bound_sat(FEE_SPIKE_FEERATE_MULTIPLE * feerate,
                                      len(book.htlcs) + extra_htlcs + FEE_SPIKE_EXTRA_HTLCS)


def crossing_htlcs(d: ChannelData, funder_msat: int, feerate_per_kw: int) -> int:
    """N (module docstring): how many HTLCs of the non-funder's, beyond what the fee
    spike buffer pays for, the funder's headroom pays the fee of: as many as 1/20 of
    ``funder_msat`` above its reserve pays for at ``feerate_per_kw``, at most the HTLCs
    the funder accepts from the other side."""
    assert d.remote is not None
    fundee = funder(d).other()
    limit = d.config.max_accepted_htlcs if fundee is REMOTE else d.remote.max_accepted_htlcs
    spare_msat = funder_msat - reserve_msat(d, funder(d))
    per_htlc_msat = HTLC_OUTPUT_WEIGHT * feerate_per_kw  # 172 weight at r sat per 1000
    if spare_msat <= 0:
        return 0
    return min(limit, spare_msat // (FEE_CROSSING_SHARE_DIVISOR * per_htlc_msat))


def funder_headroom_msat(d: ChannelData, adding: bool,
                         feerate_per_kw: int | None = None) -> int:
    """What we, the funder, keep beyond our reserve after our own add (``adding``) or
    our update_fee to ``feerate_per_kw``: BOLT #2's fee spike buffer with one HTLC more
    than the book (an add still fits after an update_fee), or, if more, the fee at the
    highest feerate with the book, the add and ``crossing_htlcs`` more HTLCs. Those are
    counted from our balance before our adds the peer has not acknowledged (the most
    the peer can think we have) at the lowest feerate it may know (module docstring)."""
    book = d.book
    pred = min_view_pred(d, REMOTE)
    _, end = funder_floor_msat(d)
    unacknowledged = sum(h.amount_msat for h in book.htlcs.values()
                         if h.offered_by is LOCAL and not pred(h.add))
    rates = feerates(book) if feerate_per_kw is None else [*feerates(book), feerate_per_kw]
    crossing = crossing_htlcs(d, end + unacknowledged, min(rates))
    return max(fee_spike_buffer_msat(book, 1, feerate_per_kw),
               fee_bound_msat(book, int(adding) + crossing, feerate_per_kw))


def covered_htlcs(known_htlcs: int, crossing: int) -> int:
    """How many HTLCs a commitment may hold, at the feerate of the funder's headroom,
    for the headroom kept after an add with ``known_htlcs`` HTLCs in the funder's book
    (that add included) to pay its fee: the weight 724 + 172 n within the fee spike
    buffer's 2 (724 + 172 (known + 1)), that is ``2 known + 6``, or ``known + crossing``
    (``funder_headroom_msat``, ``crossing_htlcs``)."""
    buffer_weight = FEE_SPIKE_FEERATE_MULTIPLE * (
        COMMITMENT_BASE_WEIGHT + HTLC_OUTPUT_WEIGHT * (known_htlcs + FEE_SPIKE_EXTRA_HTLCS))
    return max((buffer_weight - COMMITMENT_BASE_WEIGHT) // HTLC_OUTPUT_WEIGHT,
               known_htlcs + crossing)


def add_problem(d: ChannelData, static: ChannelStatic, sender: Side, htlc_id: int,
                amount_msat: int, payment_hash: bytes, cltv_expiry: int,
                height: int) -> Problem | None:
    """BOLT #2 update_add_htlc, "Requirements" (both the sending and receiving lists).

    The limits checked on both sides are computed on views both sides agree on (the
    sender's own updates plus what it acknowledged: messages are ordered, so the
    receiver has seen the same acknowledgements when the add arrives). Only the fee
    differs: the sender checks against the fee *bound* (conservative, holds whatever
    crosses on the wire), the receiver against the exact fee of the commitment it
    would sign next, so an honest sender never trips the receiver's check.
    """
    assert d.remote is not None
    receiver_cfg_min = (d.config.htlc_minimum_msat if sender is REMOTE
                        else d.remote.htlc_minimum_msat)
    max_accepted = d.config.max_accepted_htlcs if sender is REMOTE else d.remote.max_accepted_htlcs
    max_in_flight = (d.config.max_htlc_value_in_flight_msat if sender is REMOTE
                     else d.remote.max_htlc_value_in_flight_msat)
    book = d.book
    expected_id = book.next_remote_htlc_id if sender is REMOTE else book.next_local_htlc_id
    if htlc_id != expected_id:
        return Problem(f"update_add_htlc id {htlc_id}: expected {expected_id} "
                       "(duplicate or out-of-order HTLC id)")
    if len(payment_hash) != 32:
        return Problem("payment_hash must be 32 bytes")
    if amount_msat <= 0:
        return Problem("amount_msat is 0")
    if amount_msat < receiver_cfg_min:
        return Problem(f"amount_msat {amount_msat} below htlc_minimum_msat {receiver_cfg_min}")
    if cltv_expiry >= CLTV_EXPIRY_LOCKTIME_THRESHOLD:
        return Problem(f"cltv_expiry {cltv_expiry} is not a block height")
    view = book.view(min_view_pred(d, sender))
    offered = view.offered(sender)
    if len(offered) + 1 > max_accepted:
        return Problem(f"more than max_accepted_htlcs {max_accepted} HTLCs offered")
    in_flight = sum(h.amount_msat for h in offered) + amount_msat
    if in_flight > max_in_flight:
        return Problem(f"{in_flight} msat in flight exceeds max_htlc_value_in_flight_msat "
                       f"{max_in_flight}")
    candidate = Htlc(sender, htlc_id, amount_msat, payment_hash, cltv_expiry, b"",
                     Mark(sender, 0))
    if sender is LOCAL:
        return (_local_affordability(d, view, amount_msat)
                or policy_problem(d, static, candidate, height))
    return _remote_affordability(d, static, candidate)


def _local_affordability(d: ChannelData, view: View, amount_msat: int) -> Problem | None:
    """Our own add. As funder (BOLT #2: the sending node responsible for the fee) we
    keep our reserve plus the fee headroom (``funder_headroom_msat``: BOLT #2's fee
    spike buffer, or the fee of the other side's adds that may cross this one). As the
    other side we keep our reserve, the funder must still pay reserve and fee with this
    HTLC, and our adds the funder has not acknowledged stay within what its headroom
    pays for (``crossing_problem``)."""
    if funder(d) is LOCAL:
        floor, end = funder_floor_msat(d)
        left = min(floor, end - amount_msat)
        reserve = reserve_msat(d, LOCAL)
        headroom = funder_headroom_msat(d, adding=True)
        if left < reserve + headroom:
            return Problem(f"cannot afford {amount_msat} msat: {left} msat would be left, "
                           f"needs {reserve + headroom} msat ({reserve} of channel reserve "
                           f"and {headroom} of fee headroom: the fee spike buffer, or "
                           f"the fee of the peer's adds that may cross this one)")
        return None
    if view.local_msat - amount_msat < reserve_msat(d, LOCAL):
        return Problem(f"cannot afford {amount_msat} msat and keep the channel reserve")
    # BOLT #2: "SHOULD NOT offer amount_msat if ... [the funder] cannot pay the fee for the
    # updated local or remote transaction ... while maintaining its channel reserve".
    f_floor, _ = funder_floor_msat(d)
    if f_floor < reserve_msat(d, REMOTE) + fee_bound_msat(d.book, 1):
        return Problem("the funder could not pay the commitment fee with one more HTLC")
    return crossing_problem(d)


def crossing_problem(d: ChannelData) -> Problem | None:
    """Our add as the non-funder: the funder's adds and update_fee that cross it on the
    wire were checked without it, and the funder's headroom is what pays for it when
    they reach us (module docstring). So the HTLCs we count (every one in our book, this
    one and one add of the funder's) stay within what ``covered_htlcs`` allows for the
    HTLCs the funder surely counted: those it acknowledged or offered, not being
    removed."""
    pred = min_view_pred(d, REMOTE)
    known = sum(1 for h in d.book.htlcs.values() if h.removal is None and pred(h.add))
    counted = len(d.book.htlcs) + 2
    f_floor, _ = funder_floor_msat(d)
    covered = covered_htlcs(known + 1, crossing_htlcs(d, f_floor, d.book.max_feerate()))
    if counted > covered:
        return Problem(f"{counted - 2} HTLCs in the book, {known} of them acknowledged by "
                       f"the funder: wait for its acknowledgement (its fee headroom "
                       f"covers {covered} HTLCs)",
                       # Waiting helps only if the funder has something to acknowledge.
                       until_acknowledged=len(d.book.htlcs) > known)
    return None


def _fee_both_msat(static: ChannelStatic, htlcs: list[Htlc], feerate_per_kw: int) -> int:
    from protocol.commitments import commitment_fee_msat

    return max(commitment_fee_msat(static, owner, htlcs, feerate_per_kw)
               for owner in (LOCAL, REMOTE))


def _remote_affordability(d: ChannelData, static: ChannelStatic,
                          candidate: Htlc) -> Problem | None:
    """The peer's add: exact check on every commitment the book can build with it
    (BOLT #2 receiving: "an amount_msat that the sending node cannot afford at the
    current feerate_per_kw (while maintaining its channel reserve)"), our own adds the
    peer has not acknowledged yet included: they enter the next commitments too."""
    amount = candidate.amount_msat
    fee_msat = worst_fee_msat(static, [*d.book.htlcs.values(), candidate], feerates(d.book))
    floor, end = funder_floor_msat(d)
    if funder(d) is REMOTE:
        left = min(floor, end - amount)
        needed = reserve_msat(d, REMOTE) + fee_msat
        if left < needed:
            return Problem(f"sender cannot afford {amount} msat: {left} msat would be left, "
                           f"needs {needed} msat of reserve and fee")
        return None
    sender_left = d.book.view(min_view_pred(d, REMOTE)).remote_msat - amount
    if sender_left < reserve_msat(d, REMOTE):
        return Problem(f"sender cannot afford {amount} msat: {sender_left} msat would be "
                       f"left, below its channel reserve")
    if floor < fee_msat:
        return Problem("with this HTLC we (the funder) could not pay the commitment fee")
    return None


def policy_problem(d: ChannelData, static: ChannelStatic, htlc: Htlc,
                   height: int) -> Problem | None:
    """Local acceptance policy that depends on the height and the feerate, which the two
    sides may see differently for a moment. Our own adds are refused; a peer's add that
    breaks it is not a protocol violation (refusing a message it may already have
    committed would loop forever through reestablish): it is accepted and failed back
    once committed (BOLT #2: dust exposure "SHOULD fail this HTLC once it's committed";
    BOLT #4 expiry_too_soon / expiry_too_far)."""
    if htlc.cltv_expiry <= height + MIN_CLTV_EXPIRY_MARGIN_BLOCKS:
        return Problem(f"cltv_expiry {htlc.cltv_expiry} is expired or too close to height "
                       f"{height}", WARN)
    if htlc.cltv_expiry > height + MAX_CLTV_EXPIRY_DELTA_BLOCKS:
        return Problem(f"cltv_expiry {htlc.cltv_expiry} is too far beyond height {height}", WARN)
    view = d.book.view(min_view_pred(d, htlc.offered_by))
    return dust_problem(d, static, view, htlc)


def dust_problem(d: ChannelData, static: ChannelStatic, view: View,
                 candidate: Htlc) -> Problem | None:
    """BOLT #2 max_dust_htlc_exposure_msat: trimmed HTLCs are lost to fees if the channel
    closes on chain, so their sum on either commitment is capped."""
    feerate = d.book.max_feerate()
    for owner in (LOCAL, REMOTE):
        if not is_trimmed(static, owner, candidate, feerate):
            continue
        exposure = candidate.amount_msat + sum(
            h.amount_msat for h in view.htlcs if is_trimmed(static, owner, h, feerate))
        if exposure > d.config.max_dust_htlc_exposure_msat:
            return Problem(f"dust HTLC exposure {exposure} msat would exceed "
                           f"{d.config.max_dust_htlc_exposure_msat} msat", WARN)
    return None


def fee_problem(d: ChannelData, static: ChannelStatic, sender: Side,
                feerate_per_kw: int) -> Problem | None:
    """BOLT #2 update_fee: only the funder sends it; the feerate must be sane; the funder
    must afford it and keep its channel reserve, as core-lightning and LND require, so
    that it cannot push itself below the reserve through fees: we, as funder, keep the
    fee headroom at the new feerate (``funder_headroom_msat``): the fee spike buffer an
    add would need after it (twice it, every HTLC and two more), so the update never
    leaves us unable to offer an HTLC (the "degraded channel" of BOLT #2's rationale),
    or the fee of the peer's adds that may cross it if more; never below the exact fee,
    so an honest funder never trips the peer's check. The peer exactly, on the
    commitments built next with it."""
    if funder(d) is not sender:
        return Problem("update_fee from the side that is not the funder")
    cfg = d.config
    if not cfg.min_feerate_per_kw <= feerate_per_kw <= cfg.max_feerate_per_kw:
        return Problem(f"feerate_per_kw {feerate_per_kw} outside "
                       f"[{cfg.min_feerate_per_kw}, {cfg.max_feerate_per_kw}]")
    floor, _ = funder_floor_msat(d)
    if sender is LOCAL:
        needed = reserve_msat(d, LOCAL) + funder_headroom_msat(d, False, feerate_per_kw)
        if floor < needed:
            return Problem(f"cannot afford feerate_per_kw {feerate_per_kw} "
                           f"({floor} < {needed} msat of channel reserve and fee "
                           f"headroom)")
    else:
        fee_msat = worst_fee_msat(static, list(d.book.htlcs.values()), [feerate_per_kw])
        needed = reserve_msat(d, REMOTE) + fee_msat
        if floor < needed:
            return Problem(f"the funder cannot afford feerate_per_kw {feerate_per_kw} and "
                           f"keep its channel reserve ({floor} < {needed} msat)")
    return fee_dust_problem(d, static, sender, feerate_per_kw)


def fee_dust_problem(d: ChannelData, static: ChannelStatic, sender: Side,
                     feerate_per_kw: int) -> Problem | None:
    """BOLT #2 update_fee: "if the dust balance of the remote [or local] transaction at
    the new feerate_per_kw exceeds max_dust_htlc_exposure_msat: MAY fail the channel"
    (and a sender "MAY NOT send update_fee"). A higher feerate trims more HTLCs, and a
    trimmed HTLC is lost to the miners if the channel closes on chain: without this, a
    funder raising the fee could burn every HTLC we offered it (issue 11, finding 4).

    Counted on the sender's ``min_view``, the HTLCs both sides know of when the
    update_fee is read (messages are ordered), so an honest funder with our cap never
    trips it; our own adds crossing the update_fee are left out (the sender cannot see
    them): they were checked at the feerate we knew when we offered them."""
    cap = d.config.max_dust_htlc_exposure_msat
    htlcs = d.book.view(min_view_pred(d, sender)).htlcs
    for owner in (LOCAL, REMOTE):
        exposure = sum(h.amount_msat for h in htlcs
                       if is_trimmed(static, owner, h, feerate_per_kw))
        if exposure > cap:
            return Problem(f"at feerate_per_kw {feerate_per_kw} the dust HTLC exposure of "
                           f"the {owner.value} commitment would be {exposure} msat "
                           f"(> {cap} msat)")
    return None


def settle_problem(d: ChannelData, sender: Side, htlc_id: int,
                   preimage: bytes | None) -> tuple[Htlc | None, Problem | None]:
    """BOLT #2 update_fulfill_htlc / update_fail_htlc: the HTLC (offered by the other
    side) must be irrevocably committed in both commitments and not already removed;
    a preimage must hash to its payment_hash."""
    offerer = sender.other()
    htlc = d.book.htlcs.get((offerer, htlc_id))
    kind = "update_fulfill_htlc" if preimage is not None else "update_fail_htlc"
    if htlc is None:
        return None, Problem(f"{kind}: unknown HTLC id {htlc_id}")
    lc, rc = htlc.add.local_ctn, htlc.add.remote_ctn
    if lc is None or rc is None or lc > d.local_ctn or rc > d.remote_oldest_ctn:
        return None, Problem(f"{kind}: HTLC {htlc_id} is not irrevocably committed yet")
    if htlc.removal is not None:
        return None, Problem(f"{kind}: HTLC {htlc_id} was already removed")
    if preimage is not None and hashlib.sha256(preimage).digest() != htlc.payment_hash:
        return None, Problem(f"{kind}: preimage does not match payment_hash of HTLC {htlc_id}")
    return htlc, None


def params_problem(cfg: LocalConfig, funding_sat: int, their: RemoteParams,
                   feerate_per_kw: int, funder_balance_msat: int) -> Problem | None:
    """BOLT #2 open_channel / accept_channel receiver requirements for the peer's
    parameters (``their``) against our policy."""
    if their.to_self_delay > cfg.max_to_self_delay:
        return Problem(f"to_self_delay {their.to_self_delay} > {cfg.max_to_self_delay}")
    if not 1 <= their.max_accepted_htlcs <= MAX_ACCEPTED_HTLCS_LIMIT:
        return Problem(f"max_accepted_htlcs {their.max_accepted_htlcs} out of range")
    if their.dust_limit_sat < MIN_DUST_LIMIT_SAT:
        return Problem(f"dust_limit_satoshis {their.dust_limit_sat} < {MIN_DUST_LIMIT_SAT}")
    if their.dust_limit_sat > their.channel_reserve_sat:
        return Problem("dust_limit_satoshis is greater than channel_reserve_satoshis")
    if their.channel_reserve_sat < cfg.dust_limit_sat:
        return Problem("channel_reserve_satoshis is less than our dust_limit_satoshis")
    if cfg.channel_reserve_sat < their.dust_limit_sat:
        return Problem("our channel_reserve_satoshis is less than their dust_limit_satoshis")
    if their.channel_reserve_sat > funding_sat or cfg.channel_reserve_sat > funding_sat:
        return Problem("channel_reserve_satoshis exceeds the funding amount")
    if not cfg.min_feerate_per_kw <= feerate_per_kw <= cfg.max_feerate_per_kw:
        return Problem(f"feerate_per_kw {feerate_per_kw} unreasonable")
    first_fee_msat = 1000 * fee_upper_bound_sat(feerate_per_kw, 0)  # no HTLC: exact
    if funder_balance_msat < first_fee_msat:
        return Problem("the funder cannot pay the fee of the first commitment")
    problem = initial_reserve_problem(funding_sat, funder_balance_msat, feerate_per_kw,
                                      their.channel_reserve_sat)
    if problem is not None:
        return problem
    for point in (their.basepoints.funding_pubkey, their.basepoints.revocation_basepoint,
                  their.basepoints.payment_basepoint, their.basepoints.delayed_payment_basepoint,
                  their.basepoints.htlc_basepoint):
        if not valid_point(point):
            return Problem("invalid basepoint")
    return None


def funding_problem(cfg: LocalConfig, funding_sat: int, push_msat: int) -> Problem | None:
    """open_channel amounts: enough to be worth a channel, no more than bitcoin's money
    supply (we support large channels, so no 2**24 limit), ``push_msat`` within it."""
    if funding_sat < cfg.min_funding_sat:
        return Problem(f"funding_satoshis {funding_sat} too small (< {cfg.min_funding_sat})")
    if funding_sat > MAX_MONEY_SAT:
        return Problem(f"funding_satoshis {funding_sat} above the money supply")
    if push_msat > funding_sat * 1000:
        return Problem("push_msat greater than funding_satoshis * 1000")
    return None


def initial_reserve_problem(funding_sat: int, funder_balance_msat: int, feerate_per_kw: int,
                            reserve_sat: int) -> Problem | None:
    """BOLT #2 open_channel/accept_channel receiver: MUST fail the channel if "both
    to_local and to_remote amounts for the initial commitment transaction are less than
    or equal to channel_reserve_satoshis" (the message's own field). One side below
    its reserve is fine at first: it has nothing yet."""
    funder_out = funder_balance_msat - 1000 * fee_upper_bound_sat(feerate_per_kw, 0)
    fundee_out = funding_sat * 1000 - funder_balance_msat
    if max(funder_out, fundee_out) <= 1000 * reserve_sat:
        return Problem(f"both outputs of the initial commitment ({funder_out} and {fundee_out} "
                       f"msat) are at or below channel_reserve_satoshis {reserve_sat}")
    return None


def valid_point(point: bytes) -> bool:
    """A 33-byte compressed secp256k1 point that parses."""
    if len(point) != 33 or point[0] not in (2, 3):
        return False
    from coincurve import PublicKey

    try:
        PublicKey(point)
    except ValueError:
        return False
    return True
