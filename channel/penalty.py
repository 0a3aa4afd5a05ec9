"""Penalty transactions: taking everything from a revoked commitment (BOLT #5
"Revoked Transaction Close Handling").

Theory of operation. When the peer publishes a commitment it has revoked, we hold
its per-commitment secret (shachain.RevocationStore), and with our revocation
basepoint secret that gives the private key of its ``revocationpubkey``. Every
output that could pay the cheater is then ours:

- its ``to_local``: witness ``<revocation_sig> 1`` (the OP_IF branch);
- every HTLC output, offered or received: ``<revocation_sig> <revocationpubkey>``
  (the OP_DUP OP_HASH160 branch);
- the output of any HTLC-success/timeout transaction it manages to confirm from
  that commitment (same script as to_local): ``<revocation_sig> 1``.

The revoked commitment is the REMOTE one, so its keys are derived with the
remote's basepoints as owner and our revocation basepoint. to_local and
second-stage outputs are found by their scriptPubKey (each script is unique), so
they need nothing but the transaction seen on chain and the secret. HTLC outputs
are named by output index, as the ``Watch("revoked_commitment")`` record carries
them: HTLCs with one payment hash share a script, so a script says which outputs
are HTLCs but not which HTLC each is; every index is checked against the script and
amount found there (issue 11, findings 1 and 3). to_remote (ours, P2WPKH) is
swept by sweep.py like any other to_remote.
"""

from __future__ import annotations

from collections.abc import Sequence

from channel import scripts
from channel.commitment import ChannelStatic, CommitmentHtlc, Side
from channel.errors import TransactionError
from channel.keys import (
    ChannelSecrets,
    CommitmentKeys,
    derive_commitment_keys,
    derive_revocation_privkey,
    pubkey_from_secret,
)
from channel.spend import SpendableOutput, build_spend_tx, checked_htlc_output
from channel.tx import OutPoint, Tx


def revoked_keys(
    static: ChannelStatic, secrets: ChannelSecrets, per_commitment_secret: bytes
) -> tuple[CommitmentKeys, bytes]:
    point = pubkey_from_secret(per_commitment_secret)
    keys = derive_commitment_keys(static.remote.basepoints, static.local.basepoints, point)
    revocation_privkey = derive_revocation_privkey(
        secrets.revocation_basepoint_secret, per_commitment_secret
    )
    if pubkey_from_secret(revocation_privkey) != keys.revocation_pubkey:
        raise TransactionError("revocation key does not match (wrong channel secrets?)")
    return keys, revocation_privkey


def revoked_to_local_script(static: ChannelStatic, keys: CommitmentKeys) -> bytes:
    # The remote's to_local is delayed by the to_self_delay WE demand.
    return scripts.to_local_script(
        keys.revocation_pubkey, static.local.to_self_delay, keys.local_delayed_pubkey
    )


def _htlc_scripts(keys: CommitmentKeys) -> scripts.HtlcScripts:
    return scripts.HtlcScripts(
        keys.revocation_pubkey, keys.local_htlc_pubkey, keys.remote_htlc_pubkey
    )


def _revocable_htlc_script(
    htlc_scripts: scripts.HtlcScripts, h: CommitmentHtlc
) -> tuple[bytes, str]:
    """The witness script of one HTLC output of the peer's commitment, and its kind."""
    if h.offered_by is Side.REMOTE:  # offered by the commitment's owner
        return htlc_scripts.offered(h.payment_hash), "offered_htlc"
    return htlc_scripts.received(h.payment_hash, h.cltv_expiry), "received_htlc"


def revoked_record_outputs(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    txid: bytes,
    htlc_outputs: Sequence[tuple[int, CommitmentHtlc]],
    to_local_output_index: int | None,
    to_local_amount_sat: int,
    per_commitment_secret: bytes,
) -> list[SpendableOutput]:
    """The revocable outputs of the peer's revoked commitment from its
    ``Watch("revoked_commitment")`` record alone, before the transaction is seen (a
    watchtower's kit): the record's indexes and amounts are our own, so trusted."""
    keys, privkey = revoked_keys(static, secrets, per_commitment_secret)
    found: list[SpendableOutput] = []
    if to_local_output_index is not None:
        to_local = revoked_to_local_script(static, keys)
        found.append(SpendableOutput(
            OutPoint(txid, to_local_output_index), to_local_amount_sat, to_local, privkey,
            (b"\x01", to_local), description="to_local"))
    htlc_scripts = _htlc_scripts(keys)
    for index, h in htlc_outputs:
        wscript, kind = _revocable_htlc_script(htlc_scripts, h)
        found.append(SpendableOutput(
            OutPoint(txid, index), h.amount_msat // 1000, wscript, privkey,
            (keys.revocation_pubkey, wscript), description=f"{kind} {h.htlc_id}"))
    return found


def revoked_commitment_outputs(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    revoked_tx: Tx,
    per_commitment_secret: bytes,
    htlc_outputs: Sequence[tuple[int, CommitmentHtlc]] = (),
) -> list[SpendableOutput]:
    """The to_local and HTLC outputs of the peer's revoked commitment ``revoked_tx``.

    ``htlc_outputs`` are that commitment's HTLC outputs as ``(output_index, htlc)``,
    channel frame (offered_by LOCAL = us): ``Commitment.htlc_outputs`` of our view of
    it, or the ``Watch("revoked_commitment")`` record. Each is taken by its index,
    after checking that the output there carries that HTLC's script and amount; a
    mismatch raises (the record is not of this transaction). to_local, whose script
    is unique, is found by script. Raises TransactionError when nothing is revocable
    (no to_local with that secret's script, e.g. it was dust, and no HTLC output).
    """
    keys, privkey = revoked_keys(static, secrets, per_commitment_secret)
    txid = revoked_tx.txid()
    found: list[SpendableOutput] = []
    to_local = revoked_to_local_script(static, keys)
    to_local_spk = scripts.p2wsh(to_local)
    for index, out in enumerate(revoked_tx.outputs):
        if out.script_pubkey == to_local_spk:
            found.append(
                SpendableOutput(
                    OutPoint(txid, index), out.amount_sat, to_local, privkey,
                    (b"\x01", to_local), description="to_local",
                )
            )
    htlc_scripts = _htlc_scripts(keys)
    indexes = [index for index, _ in htlc_outputs]
    if len(set(indexes)) != len(indexes):
        raise TransactionError(f"an HTLC output is named twice: indexes {indexes}")
    for index, h in htlc_outputs:
        wscript, kind = _revocable_htlc_script(htlc_scripts, h)
        outpoint, amount_sat = checked_htlc_output(revoked_tx, index, wscript, h, txid=txid)
        found.append(
            SpendableOutput(
                outpoint, amount_sat, wscript, privkey, (keys.revocation_pubkey, wscript),
                description=f"{kind} {h.htlc_id}",
            )
        )
    if not found:
        raise TransactionError("no output of this transaction is revocable with that secret")
    return found


def revoked_second_stage_outputs(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    htlc_tx: Tx,
    per_commitment_secret: bytes,
) -> list[SpendableOutput]:
    """The output(s) of an HTLC-success/timeout tx spent from a revoked commitment."""
    keys, privkey = revoked_keys(static, secrets, per_commitment_secret)
    wscript = revoked_to_local_script(static, keys)
    spk = scripts.p2wsh(wscript)
    txid = htlc_tx.txid()
    found = [
        SpendableOutput(
            OutPoint(txid, i),
            o.amount_sat,
            wscript,
            privkey,
            (b"\x01", wscript),
            description="second_stage",
        )
        for i, o in enumerate(htlc_tx.outputs)
        if o.script_pubkey == spk
    ]
    if not found:
        raise TransactionError("not a second-stage HTLC tx of a commitment with that secret")
    return found


def build_penalty_tx(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    revoked_tx: Tx,
    per_commitment_secret: bytes,
    htlc_outputs: Sequence[tuple[int, CommitmentHtlc]],
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """One transaction taking to_local and every HTLC output of ``revoked_tx``
    (``htlc_outputs`` as for ``revoked_commitment_outputs``)."""
    outputs = revoked_commitment_outputs(
        static, secrets, revoked_tx, per_commitment_secret, htlc_outputs
    )
    return build_spend_tx(outputs, destination_script_pubkey, feerate_per_kw)


def build_second_stage_penalty_tx(
    static: ChannelStatic,
    secrets: ChannelSecrets,
    htlc_tx: Tx,
    per_commitment_secret: bytes,
    destination_script_pubkey: bytes,
    feerate_per_kw: int,
) -> Tx:
    """Take the output of the cheater's HTLC-success/timeout transaction."""
    outputs = revoked_second_stage_outputs(static, secrets, htlc_tx, per_commitment_secret)
    return build_spend_tx(outputs, destination_script_pubkey, feerate_per_kw)
