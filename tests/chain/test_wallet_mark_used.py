"""``OnchainWallet.mark_used``: scripts handed out after the last stored state (close
scripts of channels opened since) are found again on restore, past the gap limit."""

from __future__ import annotations

from channel.chain.interfaces import BlockRef
from channel.chain.wallet import OnchainWallet

SEED = bytes(range(32))
BIRTH = BlockRef(100, "ab" * 32)


def test_scripts_handed_out_past_the_gap_limit_are_found_again() -> None:
    wallet = OnchainWallet(SEED, BIRTH, gap_limit=20)
    stored = wallet.to_json()  # the last state written before the crash
    handed_out = [wallet.new_script_pubkey() for _ in range(25)]
    restored = OnchainWallet.from_json(SEED, stored)
    assert not restored.is_mine(handed_out[24])  # beyond next_index + gap_limit
    assert not restored.mark_used(handed_out[24])
    for script in handed_out:  # in index order each one extends the look-ahead
        assert restored.mark_used(script)
    assert all(restored.is_mine(s) for s in handed_out)
    assert restored.new_script_pubkey() not in handed_out  # never handed out twice
    assert not restored.mark_used(b"\x00\x14" + bytes(20))  # not ours
