"""Commitment transactions: building, signing, verifying (BOLT #3 "Commitment
Transaction", "Commitment Transaction Construction", "Fee Payment"; BOLT #2
"commitment_signed").

Theory of operation. Each party holds its own commitment transaction spending the
funding output; ``owner`` says whose it is. In the owner's commitment (BOLT #3's
"local" is the owner there):

- ``to_local`` pays the owner, revocable with ``revocationpubkey`` (whose secret
  the other party learns when the owner revokes) or spendable by the owner after
  ``to_self_delay`` blocks, the delay the OTHER party demanded;
- ``to_remote`` pays the other party's payment_basepoint directly (P2WPKH,
  option_static_remotekey);
- one output per untrimmed HTLC, offered (owner pays) or received (owner is
  paid), see htlc.py for trimming and the second-stage transactions.

Construction (BOLT #3, in order): trim the HTLCs under the owner's dust limit plus
their second-stage fee; fee = feerate_per_kw * (724 + 172 * untrimmed) / 1000;
the funder pays it; amounts are rounded down to satoshis; to_local/to_remote under
the owner's dust limit are omitted; outputs are sorted BIP69 (amount, then
scriptPubKey) with ties between identical HTLC outputs broken by cltv_expiry.

The 48-bit commitment number is XORed with the lower 48 bits of
SHA256(funder payment_basepoint || fundee payment_basepoint) and split across
the locktime (0x20 << 24 | lower 24 bits) and the input sequence (0x80 << 24 |
upper 24 bits), so a watcher can recover it from a transaction on chain while
outsiders cannot count a channel's updates.

Signing: commitment_signed carries our signature of the OTHER party's commitment
and one signature per HTLC transaction of it, in commitment output order.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from channel import htlc as htlc_txs
from channel import scripts
from channel.errors import InvalidSignature, TransactionError
from channel.keys import (
    Basepoints,
    ChannelSecrets,
    CommitmentKeys,
    derive_commitment_keys,
    derive_privkey,
)
from channel.sighash import bip143_sighash
from channel.signing import sign, verify, witness_signature
from channel.tx import OutPoint, Tx, TxIn, TxOut

#: Commitment numbers are 48 bits (BOLT #3): the obscured number fills 24 bits of
#: the locktime and 24 of the sequence, and the shachain index space is 48 bits.
MAX_COMMITMENT_NUMBER = (1 << 48) - 1


class Side(enum.Enum):
    """Whose side a thing is on. LOCAL is always us, REMOTE the peer."""

    LOCAL = "local"
    REMOTE = "remote"

    def other(self) -> Side:
        return Side.REMOTE if self is Side.LOCAL else Side.LOCAL


@dataclass(frozen=True, slots=True)
class CommitmentHtlc:
    """An HTLC as committed: who offered it, and its terms."""

    offered_by: Side
    htlc_id: int
    amount_msat: int
    payment_hash: bytes
    cltv_expiry: int


@dataclass(frozen=True, slots=True)
class ChannelParty:
    """One party's static channel parameters.

    ``to_self_delay`` is BOLT #2's: the CSV delay THIS party demands on the OTHER
    party's to_local output. ``dust_limit_sat`` applies to THIS party's commitment.
    """

    basepoints: Basepoints
    dust_limit_sat: int
    to_self_delay: int


@dataclass(frozen=True)
class ChannelStatic:
    """What does not change over a channel's life. The funder pays commitment fees."""

    funding_outpoint: OutPoint
    funding_sat: int
    local: ChannelParty
    remote: ChannelParty
    local_is_funder: bool

    def party(self, side: Side) -> ChannelParty:
        return self.local if side is Side.LOCAL else self.remote

    @property
    def funder(self) -> Side:
        return Side.LOCAL if self.local_is_funder else Side.REMOTE

    @cached_property
    def funding_script(self) -> bytes:
        return scripts.funding_script(
            self.local.basepoints.funding_pubkey, self.remote.basepoints.funding_pubkey
        )

    @cached_property
    def funding_script_pubkey(self) -> bytes:
        return scripts.p2wsh(self.funding_script)

    @cached_property
    def obscuring_factor(self) -> int:
        funder = self.party(self.funder).basepoints.payment_basepoint
        fundee = self.party(self.funder.other()).basepoints.payment_basepoint
        return int.from_bytes(hashlib.sha256(funder + fundee).digest()[-6:], "big")

    def mirrored(self) -> ChannelStatic:
        """The same channel as the peer sees it (LOCAL and REMOTE swapped)."""
        return ChannelStatic(
            self.funding_outpoint,
            self.funding_sat,
            self.remote,
            self.local,
            not self.local_is_funder,
        )


@dataclass(frozen=True)
class Commitment:
    """One built (unsigned) commitment transaction and what is needed to sign,
    verify and later spend it. ``to_local_*``/``to_remote_*`` are in the owner's
    frame, as BOLT #3 names them.

    ``fee_sat`` is the BOLT #3 base fee the funder pays; ``actual_fee_sat`` adds the
    trimmed HTLC amounts and rounding (funding amount minus outputs).
    """

    owner: Side
    commitment_number: int
    per_commitment_point: bytes
    tx: Tx
    fee_sat: int
    feerate_per_kw: int
    htlc_outputs: tuple[tuple[int, CommitmentHtlc], ...]
    htlc_witness_scripts: tuple[bytes, ...]  # parallel to htlc_outputs
    to_local_index: int | None
    to_remote_index: int | None
    to_local_witness_script: bytes
    to_self_delay: int
    keys: CommitmentKeys
    funding_sat: int

    @cached_property
    def txid(self) -> bytes:
        return self.tx.txid()

    @property
    def actual_fee_sat(self) -> int:
        return self.funding_sat - sum(o.amount_sat for o in self.tx.outputs)

    @cached_property
    def second_stage_script_pubkey(self) -> bytes:
        """Output script of this commitment's HTLC-success/timeout transactions."""
        return scripts.p2wsh(self.to_local_witness_script)


@dataclass(frozen=True, slots=True)
class CommitmentSignatures:
    """What commitment_signed carries: 64-byte compact signatures, HTLC ones in
    commitment output order."""

    commitment_signature: bytes
    htlc_signatures: tuple[bytes, ...]


# -- fees and trimming --------------------------------------------------------


def is_htlc_trimmed(
    static: ChannelStatic, owner: Side, htlc: CommitmentHtlc, feerate_per_kw: int
) -> bool:
    """True if ``htlc`` has no output in ``owner``'s commitment at this feerate."""
    return htlc_txs.htlc_is_trimmed(
        htlc.amount_msat,
        htlc.offered_by is owner,
        static.party(owner).dust_limit_sat,
        feerate_per_kw,
    )


def commitment_fee_sat(
    static: ChannelStatic, owner: Side, htlcs: Sequence[CommitmentHtlc], feerate_per_kw: int
) -> int:
    """BOLT #3 base fee of ``owner``'s commitment (trimmed HTLCs excluded)."""
    untrimmed = sum(1 for h in htlcs if not is_htlc_trimmed(static, owner, h, feerate_per_kw))
    return htlc_txs.weight_fee_sat(htlc_txs.commitment_weight(untrimmed), feerate_per_kw)


def obscured_commitment_number(static: ChannelStatic, commitment_number: int) -> int:
    """BOLT #3: the commitment number XOR the 48-bit obscuring factor. A number beyond
    48 bits would not fit the locktime and sequence, so it is refused, not truncated."""
    if not 0 <= commitment_number <= MAX_COMMITMENT_NUMBER:
        raise TransactionError(f"commitment number {commitment_number} is not 48 bits")
    return commitment_number ^ static.obscuring_factor


def commitment_number_from_tx(static: ChannelStatic, tx: Tx) -> int:
    """Recover the commitment number of a commitment transaction seen on chain."""
    obscured = ((tx.inputs[0].sequence & 0xFFFFFF) << 24) | (tx.locktime & 0xFFFFFF)
    return obscured ^ static.obscuring_factor


# -- building -------------------------------------------------------------------


def build_commitment(
    static: ChannelStatic,
    owner: Side,
    commitment_number: int,
    per_commitment_point: bytes,
    local_balance_msat: int,
    remote_balance_msat: int,
    htlcs: Sequence[CommitmentHtlc],
    feerate_per_kw: int,
    *,
    allow_fee_shortfall: bool = False,
) -> Commitment:
    """Build ``owner``'s commitment number ``commitment_number``.

    Balances are in the channel frame (LOCAL = us), exclude HTLCs and are before
    the fee. If the funder's balance cannot pay the fee, TransactionError is raised,
    unless ``allow_fee_shortfall`` (BOLT #3 then zeroes the funder's output; only
    the spec's test vector needs that).
    """
    if local_balance_msat < 0 or remote_balance_msat < 0:
        raise TransactionError("negative balance")
    other = owner.other()
    owner_party = static.party(owner)
    other_party = static.party(other)
    keys = derive_commitment_keys(
        owner_party.basepoints, other_party.basepoints, per_commitment_point
    )
    dust_limit_sat = owner_party.dust_limit_sat
    to_self_delay = other_party.to_self_delay

    timeout_fee = htlc_txs.htlc_timeout_fee_sat(feerate_per_kw)
    success_fee = htlc_txs.htlc_success_fee_sat(feerate_per_kw)
    # Built at the first untrimmed HTLC: only then are the HTLC keys derived.
    htlc_scripts: scripts.HtlcScripts | None = None
    # (amount_sat, script_pubkey, cltv_expiry, kind, htlc, witness_script); kind is
    # 0 for HTLC outputs, 1 to_local, 2 to_remote.
    entries: list[tuple[int, bytes, int, int, CommitmentHtlc | None, bytes]] = []
    for h in htlcs:
        amount_sat = h.amount_msat // 1000
        offered = h.offered_by is owner
        if amount_sat < dust_limit_sat + (timeout_fee if offered else success_fee):
            continue
        if htlc_scripts is None:
            htlc_scripts = scripts.HtlcScripts(
                keys.revocation_pubkey, keys.local_htlc_pubkey, keys.remote_htlc_pubkey
            )
        if offered:
            wscript = htlc_scripts.offered(h.payment_hash)
        else:
            wscript = htlc_scripts.received(h.payment_hash, h.cltv_expiry)
        entries.append((amount_sat, scripts.p2wsh(wscript), h.cltv_expiry, 0, h, wscript))

    fee_sat = htlc_txs.weight_fee_sat(htlc_txs.commitment_weight(len(entries)), feerate_per_kw)
    balances = {Side.LOCAL: local_balance_msat, Side.REMOTE: remote_balance_msat}
    funder_left_msat = balances[static.funder] - fee_sat * 1000
    if funder_left_msat < 0:
        if not allow_fee_shortfall:
            raise TransactionError(
                f"funder cannot pay the commitment fee of {fee_sat} sat "
                f"(balance {balances[static.funder]} msat)"
            )
        funder_left_msat = 0
    balances[static.funder] = funder_left_msat

    to_local_wscript = scripts.to_local_script(
        keys.revocation_pubkey, to_self_delay, keys.local_delayed_pubkey
    )
    to_local_sat = balances[owner] // 1000
    to_remote_sat = balances[other] // 1000
    if to_local_sat >= dust_limit_sat:
        entries.append(
            (to_local_sat, scripts.p2wsh(to_local_wscript), 0, 1, None, to_local_wscript)
        )
    if to_remote_sat >= dust_limit_sat:
        entries.append((to_remote_sat, scripts.p2wpkh(keys.remote_payment_pubkey), 0, 2, None, b""))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))

    obscured = obscured_commitment_number(static, commitment_number)
    tx = Tx(
        version=htlc_txs.CHANNEL_TX_VERSION,
        inputs=[TxIn(static.funding_outpoint, sequence=(0x80 << 24) | (obscured >> 24))],
        outputs=[TxOut(e[0], e[1]) for e in entries],
        locktime=(0x20 << 24) | (obscured & 0xFFFFFF),
    )
    htlc_outputs = tuple((i, e[4]) for i, e in enumerate(entries) if e[4] is not None)
    return Commitment(
        owner=owner,
        commitment_number=commitment_number,
        per_commitment_point=per_commitment_point,
        tx=tx,
        fee_sat=fee_sat,
        feerate_per_kw=feerate_per_kw,
        htlc_outputs=htlc_outputs,
        htlc_witness_scripts=tuple(e[5] for e in entries if e[4] is not None),
        to_local_index=next((i for i, e in enumerate(entries) if e[3] == 1), None),
        to_remote_index=next((i for i, e in enumerate(entries) if e[3] == 2), None),
        to_local_witness_script=to_local_wscript,
        to_self_delay=to_self_delay,
        keys=keys,
        funding_sat=static.funding_sat,
    )


def build_htlc_transactions(
    static: ChannelStatic, commitment: Commitment, feerate_per_kw: int | None = None
) -> list[tuple[int, CommitmentHtlc, Tx]]:
    """Unsigned HTLC-timeout/success transactions of ``commitment``, in output order.

    ``feerate_per_kw`` defaults to the commitment's own (BOLT #3 uses the same).
    """
    feerate = commitment.feerate_per_kw if feerate_per_kw is None else feerate_per_kw
    txid = commitment.txid
    out_spk = commitment.second_stage_script_pubkey
    return [
        (
            index,
            h,
            htlc_txs.build_htlc_tx(
                txid,
                index,
                h.amount_msat // 1000,
                h.offered_by is commitment.owner,
                h.cltv_expiry,
                out_spk,
                feerate,
            ),
        )
        for index, h in commitment.htlc_outputs
    ]


def htlc_sighashes(commitment: Commitment) -> list[bytes]:
    """BIP143 digests of the commitment's HTLC transactions, in output order."""
    hasher = htlc_txs.HtlcSighasher(
        commitment.txid, commitment.second_stage_script_pubkey, commitment.feerate_per_kw
    )
    owner = commitment.owner
    return [
        hasher.sighash(index, wscript, h.amount_msat // 1000, h.offered_by is owner, h.cltv_expiry)
        for (index, h), wscript in zip(
            commitment.htlc_outputs, commitment.htlc_witness_scripts, strict=True
        )
    ]


def commitment_sighash(static: ChannelStatic, commitment: Commitment) -> bytes:
    return bip143_sighash(commitment.tx, 0, static.funding_script, static.funding_sat)


# -- signing and verifying ----------------------------------------------------


def sign_counterparty_commitment(
    static: ChannelStatic, secrets: ChannelSecrets, commitment: Commitment
) -> CommitmentSignatures:
    """Our signatures of the peer's commitment (what commitment_signed sends)."""
    if commitment.owner is not Side.REMOTE:
        raise ValueError("sign_counterparty_commitment signs the REMOTE commitment")
    commitment_signature = sign(secrets.funding_privkey, commitment_sighash(static, commitment))
    if not commitment.htlc_outputs:
        return CommitmentSignatures(commitment_signature, ())
    htlc_privkey = derive_privkey(secrets.htlc_basepoint_secret, commitment.per_commitment_point)
    return CommitmentSignatures(
        commitment_signature=commitment_signature,
        htlc_signatures=tuple(sign(htlc_privkey, d) for d in htlc_sighashes(commitment)),
    )


def verify_holder_commitment(
    static: ChannelStatic, commitment: Commitment, signatures: CommitmentSignatures
) -> None:
    """Check the peer's signatures of our commitment; raise InvalidSignature."""
    if commitment.owner is not Side.LOCAL:
        raise ValueError("verify_holder_commitment checks the LOCAL commitment")
    if not verify(
        static.remote.basepoints.funding_pubkey,
        commitment_sighash(static, commitment),
        signatures.commitment_signature,
    ):
        raise InvalidSignature(
            f"commitment signature for commitment_number {commitment.commitment_number} "
            "does not verify"
        )
    if len(signatures.htlc_signatures) != len(commitment.htlc_outputs):
        raise InvalidSignature(
            f"expected {len(commitment.htlc_outputs)} HTLC signatures, "
            f"got {len(signatures.htlc_signatures)}"
        )
    remote_htlc_pubkey = commitment.keys.remote_htlc_pubkey
    for i, (digest, sig) in enumerate(
        zip(htlc_sighashes(commitment), signatures.htlc_signatures, strict=True)
    ):
        if not verify(remote_htlc_pubkey, digest, sig):
            index, h = commitment.htlc_outputs[i]
            raise InvalidSignature(
                f"HTLC signature #{i} (output {index}, htlc_id {h.htlc_id} offered by "
                f"{h.offered_by.value}) does not verify"
            )


def funding_witness(
    static: ChannelStatic, local_signature: bytes, remote_signature: bytes
) -> list[bytes]:
    """``0 <sig for key1> <sig for key2> <funding script>``, keys in script order."""
    local_key = static.local.basepoints.funding_pubkey
    remote_key = static.remote.basepoints.funding_pubkey
    if local_key < remote_key:
        first, second = local_signature, remote_signature
    else:
        first, second = remote_signature, local_signature
    return [b"", witness_signature(first), witness_signature(second), static.funding_script]


def finalize_holder_commitment(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    commitment: Commitment,
    remote_signature: bytes,
) -> Tx:
    """Our commitment with the 2-of-2 witness, ready to broadcast."""
    if commitment.owner is not Side.LOCAL:
        raise ValueError("finalize_holder_commitment takes the LOCAL commitment")
    local_signature = sign(secrets.funding_privkey, commitment_sighash(static, commitment))
    return commitment.tx.with_witnesses(
        [funding_witness(static, local_signature, remote_signature)]
    )


def finalize_holder_htlc_tx(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    commitment: Commitment,
    output_index: int,
    remote_htlc_signature: bytes,
    payment_preimage: bytes | None = None,
) -> Tx:
    """Our HTLC-timeout (no preimage) or HTLC-success (preimage) transaction for
    HTLC output ``output_index`` of our commitment, fully witnessed (BOLT #5:
    spending our own commitment's HTLC outputs)."""
    if commitment.owner is not Side.LOCAL:
        raise ValueError("finalize_holder_htlc_tx takes the LOCAL commitment")
    position = next(
        (i for i, (index, _) in enumerate(commitment.htlc_outputs) if index == output_index), None
    )
    if position is None:
        raise TransactionError(f"output {output_index} is not an HTLC output")
    _, h = commitment.htlc_outputs[position]
    offered = h.offered_by is commitment.owner
    if offered == (payment_preimage is not None):
        raise TransactionError("HTLC-success needs the preimage; HTLC-timeout must not have one")
    if payment_preimage is not None and hashlib.sha256(payment_preimage).digest() != h.payment_hash:
        raise TransactionError("preimage does not match the payment hash")
    wscript = commitment.htlc_witness_scripts[position]
    tx = htlc_txs.build_htlc_tx(
        commitment.txid,
        output_index,
        h.amount_msat // 1000,
        offered,
        h.cltv_expiry,
        commitment.second_stage_script_pubkey,
        commitment.feerate_per_kw,
    )
    digest = bip143_sighash(tx, 0, wscript, h.amount_msat // 1000)
    local_key = derive_privkey(secrets.htlc_basepoint_secret, commitment.per_commitment_point)
    witness = htlc_txs.htlc_tx_witness(
        remote_htlc_signature, sign(local_key, digest), wscript, payment_preimage
    )
    return tx.with_witnesses([witness])
