"""Sweeps and HTLC claims after a unilateral close (BOLT #5 "Unilateral Close
Handling: Local Commitment Transaction" and "...: Remote Commitment Transaction").

Theory of operation. What is ours after a force close, and how we take it:

Our own commitment on chain (we are its owner; our funds wait ``to_self_delay``
blocks, the delay the REMOTE demanded):
- ``to_local``: witness ``<local_delayedsig> <>`` (the OP_ELSE branch) with the
  input's nSequence = to_self_delay (BIP68 relative lock, enforced by OP_CSV);
- HTLC outputs: through the pre-signed HTLC-success (with the preimage) or
  HTLC-timeout (from cltv_expiry) transactions, see
  ``commitment.finalize_holder_htlc_tx``; then their outputs, which carry the
  to_local script, like to_local: ``sweep_second_stage``.

The peer's commitment on chain (it is the owner; we are BOLT #3's "remote" there):
- ``to_remote``: P2WPKH to our payment_basepoint (static remote key), spendable at
  once: ``sweep_to_remote``;
- HTLCs the peer offered us: ``<remotehtlcsig> <payment_preimage>`` directly
  (``claim_htlc_with_preimage``);
- HTLCs we offered the peer: ``<remotehtlcsig> <>`` once the chain reaches
  ``cltv_expiry`` (nLockTime = cltv_expiry, OP_CLTV) (``claim_htlc_after_timeout``);
- several of both at once: ``claim_remote_htlcs``.
HTLC outputs are named by output index, never found by script: HTLCs with one
payment hash (and, for ours, one CLTV) share a script, so only the index tells
them apart (issue 11, finding 1). The index comes from the commitment builder
(``Commitment.htlc_outputs``) or a ``Watch`` record, and is checked against the
script and amount at that index before anything is signed.

Every function builds the transaction AND its witness, paying to a destination
script at a fee rate, via spend.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from channel import scripts
from channel.commitment import ChannelStatic, CommitmentHtlc, Side
from channel.errors import TransactionError
from channel.keys import ChannelSecrets, CommitmentKeys, derive_commitment_keys, derive_privkey
from channel.spend import (
    SEQUENCE_FINAL,
    SEQUENCE_LOCKTIME_ENABLED,
    SpendableOutput,
    build_spend_tx,
    checked_htlc_output,
)
from channel.tx import OutPoint, Tx


def _find(tx: Tx, script_pubkey: bytes, what: str) -> tuple[OutPoint, int]:
    txid = tx.txid()
    for index, out in enumerate(tx.outputs):
        if out.script_pubkey == script_pubkey:
            return OutPoint(txid, index), out.amount_sat
    raise TransactionError(f"no {what} output in transaction {tx.txid_hex()}")


def own_delayed_output(
    static: ChannelStatic, secrets: ChannelSecrets, tx: Tx, commitment_number: int, what: str
) -> SpendableOutput:
    """Our CSV-delayed output of ``tx`` (our commitment ``commitment_number``, or one of
    its HTLC-success/timeout transactions), found by its script, as a spend input."""
    point = secrets.per_commitment_point(commitment_number)
    keys = derive_commitment_keys(static.local.basepoints, static.remote.basepoints, point)
    delay = static.remote.to_self_delay
    wscript = scripts.to_local_script(keys.revocation_pubkey, delay, keys.local_delayed_pubkey)
    outpoint, amount = _find(tx, scripts.p2wsh(wscript), what)
    return SpendableOutput(
        outpoint,
        amount,
        wscript,
        derive_privkey(secrets.delayed_payment_basepoint_secret, point),
        (b"", wscript),
        sequence=delay,  # BIP68: the input waits to_self_delay blocks
        description=what,
    )


def sweep_to_local(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    commitment_tx: Tx,
    commitment_number: int,
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Spend our to_local from our own commitment (valid to_self_delay blocks after
    it confirmed)."""
    spend = own_delayed_output(static, secrets, commitment_tx, commitment_number, "to_local")
    return build_spend_tx([spend], destination_script_pubkey, feerate_per_kw)


def sweep_second_stage(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    htlc_tx: Tx,
    commitment_number: int,
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Spend the output of our HTLC-success/timeout tx after to_self_delay."""
    spend = own_delayed_output(static, secrets, htlc_tx, commitment_number, "second-stage")
    return build_spend_tx([spend], destination_script_pubkey, feerate_per_kw)


def sweep_to_remote(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    remote_commitment_tx: Tx,
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Spend our to_remote output from the peer's commitment (no delay)."""
    spend = to_remote_output(static, secrets, remote_commitment_tx)
    return build_spend_tx([spend], destination_script_pubkey, feerate_per_kw)


def to_remote_output(
    static: ChannelStatic, secrets: ChannelSecrets, remote_commitment_tx: Tx
) -> SpendableOutput:
    """Our to_remote output of the peer's commitment (static remote key: P2WPKH to our
    payment_basepoint, found by script), as a spend input."""
    pubkey = static.local.basepoints.payment_basepoint
    outpoint, amount = _find(remote_commitment_tx, scripts.p2wpkh(pubkey), "to_remote")
    return SpendableOutput(
        outpoint,
        amount,
        scripts.p2wpkh_script_code(pubkey),
        secrets.payment_basepoint_secret,
        (pubkey,),
        description="to_remote",
    )


def _remote_keys(static: ChannelStatic, remote_per_commitment_point: bytes) -> CommitmentKeys:
    return derive_commitment_keys(
        static.remote.basepoints, static.local.basepoints, remote_per_commitment_point
    )


#: One HTLC claim on the peer's commitment: its output index there (as in
#: ``Commitment.htlc_outputs``), the HTLC (channel frame), and the preimage for an
#: HTLC the peer offered us, or None to reclaim one we offered after its timeout.
HtlcClaim = tuple[int, CommitmentHtlc, bytes | None]


def claim_htlc_with_preimage(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    remote_commitment_tx: Tx,
    remote_per_commitment_point: bytes,
    htlc_output: tuple[int, CommitmentHtlc],
    payment_preimage: bytes,
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Take an HTLC the peer offered us, from the peer's commitment, by preimage.

    ``htlc_output`` is ``(output_index, htlc)`` from the commitment's ``htlc_outputs``."""
    index, htlc = htlc_output
    return claim_remote_htlcs(
        static, secrets, remote_commitment_tx, remote_per_commitment_point,
        [(index, htlc, payment_preimage)], destination_script_pubkey, feerate_per_kw,
    )


def claim_htlc_after_timeout(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    remote_commitment_tx: Tx,
    remote_per_commitment_point: bytes,
    htlc_output: tuple[int, CommitmentHtlc],
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Take back an HTLC we offered, from the peer's commitment, at cltv_expiry.

    ``htlc_output`` is ``(output_index, htlc)`` from the commitment's ``htlc_outputs``."""
    index, htlc = htlc_output
    return claim_remote_htlcs(
        static, secrets, remote_commitment_tx, remote_per_commitment_point,
        [(index, htlc, None)], destination_script_pubkey, feerate_per_kw,
    )


def claim_remote_htlcs(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    remote_commitment_tx: Tx,
    remote_per_commitment_point: bytes,
    claims: Sequence[HtlcClaim],
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """One transaction taking several HTLC outputs of the peer's commitment.

    Each claim names its output by index: a script does not identify an HTLC (two the
    peer offered with one payment hash share one, and two we offered with one hash
    and CLTV too), so a claim found by script would take the first match, the
    smallest by BIP69, and leave the others to the peer's timeout (issue 11, finding
    1). Each output is checked to carry exactly that HTLC's script and amount; one
    output claimed twice is refused. nLockTime is the latest CLTV of the timeout
    claims (OP_CLTV needs the transaction's locktime to reach each one).
    """
    spends, locktime = remote_htlc_claim_outputs(
        static, secrets, remote_commitment_tx, remote_per_commitment_point, claims
    )
    return build_spend_tx(spends, destination_script_pubkey, feerate_per_kw, locktime=locktime)


def remote_htlc_claim_outputs(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    remote_commitment_tx: Tx,
    remote_per_commitment_point: bytes,
    claims: Sequence[HtlcClaim],
) -> tuple[list[SpendableOutput], int]:
    """The spend inputs of ``claim_remote_htlcs`` (same checks) and the nLockTime
    their transaction needs (the latest CLTV of the timeout claims, else 0)."""
    if not claims:
        raise TransactionError("no HTLC to claim")
    indexes = [index for index, _, _ in claims]
    if len(set(indexes)) != len(indexes):
        raise TransactionError(f"an HTLC output is claimed twice: indexes {indexes}")
    keys = _remote_keys(static, remote_per_commitment_point)
    privkey = derive_privkey(secrets.htlc_basepoint_secret, remote_per_commitment_point)
    spends = []
    locktime = 0
    txid = remote_commitment_tx.txid()
    for index, htlc, preimage in claims:
        if preimage is not None:
            if htlc.offered_by is not Side.REMOTE:
                raise TransactionError("only an HTLC the peer offered is claimed by preimage")
            if hashlib.sha256(preimage).digest() != htlc.payment_hash:
                raise TransactionError("preimage does not match the payment hash")
            wscript = scripts.offered_htlc_script(
                keys.revocation_pubkey, keys.local_htlc_pubkey, keys.remote_htlc_pubkey,
                htlc.payment_hash,
            )
            witness: tuple[bytes, ...] = (preimage, wscript)
            sequence = SEQUENCE_FINAL
            description = f"htlc {htlc.htlc_id} by preimage"
        else:
            if htlc.offered_by is not Side.LOCAL:
                raise TransactionError("only an HTLC we offered is reclaimed after its timeout")
            wscript = scripts.received_htlc_script(
                keys.revocation_pubkey, keys.local_htlc_pubkey, keys.remote_htlc_pubkey,
                htlc.payment_hash, htlc.cltv_expiry,
            )
            witness = (b"", wscript)
            sequence = SEQUENCE_LOCKTIME_ENABLED  # a final sequence would disable nLockTime
            description = f"htlc {htlc.htlc_id} after timeout"
            locktime = max(locktime, htlc.cltv_expiry)
        outpoint, amount_sat = checked_htlc_output(remote_commitment_tx, index, wscript, htlc,
                                                   txid=txid)
        spends.append(
            SpendableOutput(
                outpoint, amount_sat, wscript, privkey, witness,
                sequence=sequence, description=description,
            )
        )
    return spends, locktime
