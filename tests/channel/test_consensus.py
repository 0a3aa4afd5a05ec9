"""Every channel transaction type against the regtest node's consensus checks.

For each one the node must accept the valid spend and refuse the invalid one: a
to_local sweep one block before to_self_delay matures, a revoked to_local spent
without the revocation key, an HTLC-timeout before its CLTV, an HTLC-success
with a wrong preimage, a penalty against a commitment that was not revoked (the
wrong revocation key), a commitment or closing tx with a bad signature.

The ``regtest_node`` fixture comes from regtest/pytest_plugin.py; if that plugin is
not registered, a node is opened here in a temporary directory the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from channel import scripts
from channel.closing import (
    build_closing_tx,
    finalize_closing_tx,
    sign_closing_tx,
    verify_closing_signature,
)
from channel.commitment import (
    ChannelParty,
    ChannelStatic,
    Commitment,
    CommitmentHtlc,
    Side,
    build_commitment,
    finalize_holder_commitment,
    finalize_holder_htlc_tx,
    sign_counterparty_commitment,
    verify_holder_commitment,
)
from channel.errors import TransactionError
from channel.keys import ChannelSecrets, derive_revocation_privkey
from channel.penalty import (
    build_penalty_tx,
    build_second_stage_penalty_tx,
    revoked_commitment_outputs,
)
from channel.spend import SpendableOutput, build_spend_tx
from channel.sweep import (
    claim_htlc_after_timeout,
    claim_htlc_with_preimage,
    sweep_second_stage,
    sweep_to_local,
    sweep_to_remote,
)
from channel.tx import OutPoint, Tx

node_mod = pytest.importorskip("regtest.node", reason="regtest/node is not available")

FUNDING_SAT = 1_000_000
FEERATE = 2_500  # sat per kw, above the node's 1 sat/vB relay floor
LOCAL_DELAY = 5  # blocks the REMOTE demands on our to_local
REMOTE_DELAY = 6  # blocks WE demand on the remote's to_local
PREIMAGE_OFFERED_BY_REMOTE = b"\x42" * 32
PREIMAGE_OFFERED_BY_LOCAL = b"\x24" * 32
DEST = scripts.p2wpkh(bytes.fromhex("02" + "11" * 32))  # where claims go (any script)


@pytest.fixture
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    try:
        yield request.getfixturevalue("regtest_node")
        return
    except pytest.FixtureLookupError:
        pass
    n = node_mod.Node(tmp_path / "node", clock=lambda: 1_700_000_000)
    try:
        yield n
    finally:
        n.close()


def height(node: Any) -> int:
    return int(node.call("getblockcount"))


def accepted(node: Any, tx: Tx) -> tuple[bool, str]:
    (result,) = node.call("testmempoolaccept", [tx.serialize().hex()])
    return bool(result["allowed"]), str(result.get("reject-reason", ""))


def assert_accepted(node: Any, tx: Tx) -> None:
    ok, reason = accepted(node, tx)
    assert ok, reason


def assert_refused(node: Any, tx: Tx) -> str:
    ok, reason = accepted(node, tx)
    assert not ok, "the node accepted an invalid transaction"
    return reason


def broadcast(node: Any, tx: Tx, confirm: bool = True) -> None:
    node.call("sendrawtransaction", tx.serialize().hex())
    if confirm:
        node.mine(1)


def mine_to(node: Any, target_height: int) -> None:
    if target_height > height(node):
        node.mine(target_height - height(node))


@dataclass
class Channel:
    """Both parties of one funded channel, in-process."""

    node: Any
    local: ChannelSecrets  # us
    remote: ChannelSecrets  # the peer
    static: ChannelStatic  # our view
    htlcs: list[CommitmentHtlc]  # channel frame (offered_by LOCAL = us)

    @property
    def remote_static(self) -> ChannelStatic:
        return self.static.mirrored()

    def mirrored_htlcs(self) -> list[CommitmentHtlc]:
        return [
            CommitmentHtlc(
                h.offered_by.other(), h.htlc_id, h.amount_msat, h.payment_hash, h.cltv_expiry
            )
            for h in self.htlcs
        ]

    def remote_htlc_outputs(self, n: int) -> tuple[tuple[int, CommitmentHtlc], ...]:
        """The HTLC outputs of the PEER's commitment n in our frame (offered_by LOCAL =
        us), as our commitment builder gives them (and a Watch record carries them)."""
        lb, rb = self.balances(n)
        point = self.remote.per_commitment_point(n)
        ours = build_commitment(self.static, Side.REMOTE, n, point, lb, rb, self.htlcs, FEERATE)
        return ours.htlc_outputs

    def balances(self, commitment_number: int) -> tuple[int, int]:
        # A different split per commitment number, so revoked states differ.
        local_msat = 500_000_000 + commitment_number * 10_000_000
        in_htlcs = sum(h.amount_msat for h in self.htlcs)
        return local_msat, FUNDING_SAT * 1000 - local_msat - in_htlcs

    def local_commitment(self, n: int) -> Commitment:
        lb, rb = self.balances(n)
        point = self.local.per_commitment_point(n)
        return build_commitment(self.static, Side.LOCAL, n, point, lb, rb, self.htlcs, FEERATE)

    def signed_local_commitment(self, n: int) -> tuple[Commitment, Tx, tuple[bytes, ...]]:
        """Our commitment n with the peer's signatures, ready to broadcast."""
        c = self.local_commitment(n)
        lb, rb = self.balances(n)
        remote_view = build_commitment(
            self.remote_static,
            Side.REMOTE,
            n,
            c.per_commitment_point,
            rb,
            lb,
            self.mirrored_htlcs(),
            FEERATE,
        )
        sigs = sign_counterparty_commitment(self.remote_static, self.remote, remote_view)
        verify_holder_commitment(self.static, c, sigs)
        tx = finalize_holder_commitment(self.static, self.local, c, sigs.commitment_signature)
        return c, tx, sigs.htlc_signatures

    def signed_remote_commitment(self, n: int) -> tuple[Commitment, Tx, tuple[bytes, ...]]:
        """The PEER's commitment n, as the peer would broadcast it, with our view."""
        lb, rb = self.balances(n)
        point = self.remote.per_commitment_point(n)
        ours = build_commitment(self.static, Side.REMOTE, n, point, lb, rb, self.htlcs, FEERATE)
        sigs = sign_counterparty_commitment(self.static, self.local, ours)
        theirs = build_commitment(
            self.remote_static, Side.LOCAL, n, point, rb, lb, self.mirrored_htlcs(), FEERATE
        )
        verify_holder_commitment(self.remote_static, theirs, sigs)
        tx = finalize_holder_commitment(
            self.remote_static, self.remote, theirs, sigs.commitment_signature
        )
        return theirs, tx, sigs.htlc_signatures


def open_channel(node: Any) -> Channel:
    local = ChannelSecrets.from_seed(hashlib.sha256(b"consensus local").digest())
    remote = ChannelSecrets.from_seed(hashlib.sha256(b"consensus remote").digest())
    if height(node) < 101:
        node.mine(101 - height(node))
    funding_spk = scripts.p2wsh(
        scripts.funding_script(
            local.basepoints().funding_pubkey, remote.basepoints().funding_pubkey
        )
    )
    txid_hex, vout = node.send_to_script(funding_spk, FUNDING_SAT)
    node.mine(1)
    static = ChannelStatic(
        funding_outpoint=OutPoint.from_display(txid_hex, vout),
        funding_sat=FUNDING_SAT,
        local=ChannelParty(local.basepoints(), 546, REMOTE_DELAY),
        remote=ChannelParty(remote.basepoints(), 546, LOCAL_DELAY),
        local_is_funder=True,
    )
    assert static.funding_script_pubkey == funding_spk
    tip = height(node)
    htlcs = [
        CommitmentHtlc(
            Side.LOCAL, 0, 50_000_000, hashlib.sha256(PREIMAGE_OFFERED_BY_LOCAL).digest(), tip + 20
        ),
        CommitmentHtlc(
            Side.REMOTE,
            0,
            60_000_000,
            hashlib.sha256(PREIMAGE_OFFERED_BY_REMOTE).digest(),
            tip + 30,
        ),
    ]
    return Channel(node, local, remote, static, htlcs)


@pytest.fixture
def channel(node: Any) -> Channel:
    return open_channel(node)


# -- our commitment: to_local after the delay, HTLC-timeout/success, second stage ----


def test_commitment_signature_is_checked(channel: Channel) -> None:
    c, tx, _ = channel.signed_local_commitment(3)
    bad = finalize_holder_commitment(channel.static, channel.local, c, b"\x01" * 64)
    assert_refused(channel.node, bad)
    assert_accepted(channel.node, tx)


def test_to_local_sweep_waits_for_to_self_delay(channel: Channel) -> None:
    node = channel.node
    _, tx, _ = channel.signed_local_commitment(3)
    broadcast(node, tx)
    confirmed_at = height(node)
    sweep = sweep_to_local(channel.static, channel.local, tx, 3, DEST, FEERATE)
    # Valid in the block at confirmed_at + LOCAL_DELAY; the mempool checks tip + 1.
    mine_to(node, confirmed_at + LOCAL_DELAY - 2)
    assert "non-BIP68-final" in assert_refused(node, sweep)
    node.mine(1)
    assert_accepted(node, sweep)


def test_htlc_timeout_waits_for_cltv_then_second_stage_sweep(channel: Channel) -> None:
    node = channel.node
    c, tx, remote_htlc_sigs = channel.signed_local_commitment(3)
    broadcast(node, tx)
    ((pos, (index, htlc)),) = (
        (i, x) for i, x in enumerate(c.htlc_outputs) if x[1].offered_by is Side.LOCAL
    )
    timeout_tx = finalize_holder_htlc_tx(
        channel.static, channel.local, c, index, remote_htlc_sigs[pos]
    )
    assert timeout_tx.locktime == htlc.cltv_expiry
    mine_to(node, htlc.cltv_expiry - 1)  # next block's height == cltv_expiry: too early
    assert_refused(node, timeout_tx)
    node.mine(1)
    broadcast(node, timeout_tx)
    confirmed_at = height(node)
    sweep = sweep_second_stage(channel.static, channel.local, timeout_tx, 3, DEST, FEERATE)
    mine_to(node, confirmed_at + LOCAL_DELAY - 2)
    assert_refused(node, sweep)
    node.mine(1)
    assert_accepted(node, sweep)


def test_htlc_success_needs_the_preimage(channel: Channel) -> None:
    node = channel.node
    c, tx, remote_htlc_sigs = channel.signed_local_commitment(3)
    broadcast(node, tx)
    ((pos, (index, _)),) = (
        (i, x) for i, x in enumerate(c.htlc_outputs) if x[1].offered_by is Side.REMOTE
    )
    success_tx = finalize_holder_htlc_tx(
        channel.static, channel.local, c, index, remote_htlc_sigs[pos], PREIMAGE_OFFERED_BY_REMOTE
    )
    wrong = success_tx.copy()
    wrong.inputs[0].witness[3] = b"\x43" * 32
    assert_refused(node, wrong)
    with pytest.raises(TransactionError):
        finalize_holder_htlc_tx(
            channel.static, channel.local, c, index, remote_htlc_sigs[pos], b"\x43" * 32
        )
    assert_accepted(node, success_tx)


# -- the peer's commitment: to_remote, HTLC claims by preimage and after timeout -----


def test_claims_from_the_remote_commitment(channel: Channel) -> None:
    node = channel.node
    theirs, tx, _ = channel.signed_remote_commitment(4)
    broadcast(node, tx)
    point = theirs.per_commitment_point
    assert_accepted(node, sweep_to_remote(channel.static, channel.local, tx, DEST, FEERATE))

    htlc_outputs = channel.remote_htlc_outputs(4)
    offered_by_remote = next(x for x in htlc_outputs if x[1].offered_by is Side.REMOTE)
    claim = claim_htlc_with_preimage(
        channel.static,
        channel.local,
        tx,
        point,
        offered_by_remote,
        PREIMAGE_OFFERED_BY_REMOTE,
        DEST,
        FEERATE,
    )
    wrong = claim.copy()
    wrong.inputs[0].witness[1] = b"\x43" * 32
    assert_refused(node, wrong)
    assert_accepted(node, claim)

    offered_by_us = next(x for x in htlc_outputs if x[1].offered_by is Side.LOCAL)
    reclaim = claim_htlc_after_timeout(
        channel.static, channel.local, tx, point, offered_by_us, DEST, FEERATE
    )
    mine_to(node, offered_by_us[1].cltv_expiry - 1)
    assert_refused(node, reclaim)
    node.mine(1)
    assert_accepted(node, reclaim)


# -- penalties ---------------------------------------------------------------------


def test_penalty_takes_everything_from_a_revoked_commitment(channel: Channel) -> None:
    node = channel.node
    revoked, tx, _ = channel.signed_remote_commitment(1)
    secret = channel.remote.per_commitment_secret(1)  # revealed by revoke_and_ack
    broadcast(node, tx)

    htlc_outputs = channel.remote_htlc_outputs(1)
    penalty = build_penalty_tx(
        channel.static, channel.local, tx, secret, htlc_outputs, DEST, FEERATE
    )
    # to_local and both HTLC outputs.
    assert len(penalty.inputs) == 3
    assert {i.outpoint.index for i in penalty.inputs} == (
        {revoked.to_local_index} | {i for i, _ in revoked.htlc_outputs}
    )
    assert_accepted(node, penalty)

    # The cheater's own delayed path on to_local is closed to it for REMOTE_DELAY
    # blocks, and its revocation branch needs the revocation key: signing with any
    # other key (here its own delayed key) is refused.
    outputs = revoked_commitment_outputs(channel.static, channel.local, tx, secret, htlc_outputs)
    to_local = next(o for o in outputs if o.description == "to_local")
    forged = SpendableOutput(
        to_local.outpoint,
        to_local.amount_sat,
        to_local.script_code,
        channel.remote.delayed_payment_basepoint_secret,
        to_local.witness_suffix,
    )
    assert_refused(node, build_spend_tx([forged], DEST, FEERATE))
    broadcast(node, penalty)


def test_penalty_with_the_wrong_revocation_key_is_refused(channel: Channel) -> None:
    node = channel.node
    current, tx, _ = channel.signed_remote_commitment(2)  # not revoked
    broadcast(node, tx)
    old_secret = channel.remote.per_commitment_secret(1)
    with pytest.raises(TransactionError):
        build_penalty_tx(
            channel.static, channel.local, tx, old_secret, channel.remote_htlc_outputs(2),
            DEST, FEERATE,
        )
    # Force it: the right scripts, signed with the key an old secret gives.
    wrong_key = derive_revocation_privkey(channel.local.revocation_basepoint_secret, old_secret)
    assert current.to_local_index is not None
    txid = tx.txid()
    forged = [
        SpendableOutput(
            OutPoint(txid, current.to_local_index),
            tx.outputs[current.to_local_index].amount_sat,
            current.to_local_witness_script,
            wrong_key,
            (b"\x01", current.to_local_witness_script),
        ),
    ] + [
        SpendableOutput(
            OutPoint(txid, index),
            tx.outputs[index].amount_sat,
            wscript,
            wrong_key,
            (current.keys.revocation_pubkey, wscript),
        )
        for (index, _), wscript in zip(
            current.htlc_outputs, current.htlc_witness_scripts, strict=True
        )
    ]
    for output in forged:
        assert_refused(node, build_spend_tx([output], DEST, FEERATE))


def test_penalty_on_a_second_stage_htlc_tx(channel: Channel) -> None:
    node = channel.node
    revoked, tx, our_htlc_sigs = channel.signed_remote_commitment(1)
    secret = channel.remote.per_commitment_secret(1)
    broadcast(node, tx)
    # The cheater claims the HTLC we offered it with an HTLC-success from its own
    # (revoked) commitment; its output is revocable too.
    ((pos, (index, _)),) = (
        (i, x) for i, x in enumerate(revoked.htlc_outputs) if x[1].offered_by is Side.REMOTE
    )  # REMOTE in the cheater's frame = us
    success = finalize_holder_htlc_tx(
        channel.remote_static,
        channel.remote,
        revoked,
        index,
        our_htlc_sigs[pos],
        PREIMAGE_OFFERED_BY_LOCAL,
    )
    broadcast(node, success)
    penalty = build_second_stage_penalty_tx(
        channel.static, channel.local, success, secret, DEST, FEERATE
    )
    assert_accepted(node, penalty)
    # Built with the secret of a commitment that was not revoked: refused by us.
    with pytest.raises(TransactionError):
        build_second_stage_penalty_tx(
            channel.static,
            channel.local,
            success,
            channel.remote.per_commitment_secret(2),
            DEST,
            FEERATE,
        )


# -- mutual close ----------------------------------------------------------------------


def test_closing_transaction(channel: Channel) -> None:
    local_spk = scripts.p2wpkh(channel.local.basepoints().payment_basepoint)
    remote_spk = scripts.p2wpkh(channel.remote.basepoints().payment_basepoint)
    tx = build_closing_tx(channel.static, 600_000, 399_000, local_spk, remote_spk)
    remote_tx = build_closing_tx(channel.remote_static, 399_000, 600_000, remote_spk, local_spk)
    assert remote_tx.serialize() == tx.serialize()
    remote_sig = sign_closing_tx(channel.remote_static, channel.remote, remote_tx)
    verify_closing_signature(channel.static, tx, remote_sig)
    local_sig = sign_closing_tx(channel.static, channel.local, tx)
    bad = finalize_closing_tx(channel.static, tx, local_sig, local_sig)
    assert_refused(channel.node, bad)
    signed = finalize_closing_tx(channel.static, tx, local_sig, remote_sig)
    assert_accepted(channel.node, signed)
