"""`make demo` end to end: the module `make demo` runs, with its real processes (node,
chanhubd, two client actors), must tell its whole story and exit 0."""

from __future__ import annotations

import pytest

from regtest import demo


def test_demo_tells_its_story(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([]) == 0
    output = capsys.readouterr().out
    # act 1, the chain
    assert "Alice holds 1.50000000 BTC" in output
    assert "allowed=True" in output
    assert "refused (-25) bad-txns-inputs-missingorspent" in output
    # act 2, the hub: every figure below is also checked inside the demo, which would
    # have exited 1 on a mismatch
    assert "Alice online (pid" in output and "Bob online (pid" in output
    assert "Bob asks for inbound liquidity (RequestInbound, 1,000,000 sat)" in output
    assert "Alice pays them all" in output
    assert "Bob refunds invoice 37 in full (5,000 sat)" in output
    assert "Alice closes cooperatively" in output
    assert "Bob force-closes" in output
    assert "Bob's own process sweeps it into his wallet" in output
    assert "the story in figures" in output
    assert "Alice: 100,000,000 sat -> " in output and "the hub's wallet: " in output
    # act 3, the breach on the hub: Alice publishes a revoked commitment of a backup,
    # the hub's own watch (in chanhubd) takes the whole channel; figures checked inside
    assert "backs up her store while all of it is hers" in output
    assert "Alice publishes the backup's revoked commitment" in output
    assert "the hub's own watch punishes: penalty tx" in output
    assert "Alice keeps nothing of the channel" in output
    assert "Alice tried to take back 80,001,080 msat she had paid" in output
    assert "101 payments received" in output
    assert "demo done" in output


def test_a_failed_check_exits_1_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    async def wrong_story(*args: object) -> None:
        demo.check(False, "the ledger says 1 sat, the chain 2 sat")

    monkeypatch.setattr(demo, "story", wrong_story)
    assert demo.main([]) == 1
    assert "demo failed: the ledger says 1 sat, the chain 2 sat" in capsys.readouterr().out
