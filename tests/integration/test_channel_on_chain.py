"""The three layers together on a real chain: protocol/ drives two parties, channel/
builds and signs their transactions, and the embedded regtest node (over HTTP
JSON-RPC, through the client the hub uses) judges every one of them.

One channel per test, opened for real (the funder pays the 2-of-2 output from its own
coin and broadcasts only after `funding_signed`), paid off-chain, then ended in each
of the three ways a channel ends: a cooperative close, a force close with the delayed
sweep, and a breach punished by a penalty transaction. Real clock: these tests wait
on sockets, and an autojumping clock would fire the client's timeouts.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from channel.chain import BitcoinRpc, RpcError
from channel.errors import ShachainError
from channel.tx import Tx
from protocol import Broadcast, Channel
from regtest.twoparty import TwoPartyChannel

FUNDING_SAT = 1_000_000
TO_SELF_DELAY = 6


@pytest.fixture
async def pair(regtest_rpc: Any) -> AsyncIterator[TwoPartyChannel]:
    async with BitcoinRpc(regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path)) as rpc:
        pair = TwoPartyChannel(rpc, label="integration", to_self_delay=TO_SELF_DELAY)
        funding_tx = await pair.open(FUNDING_SAT)
        funding = await rpc.gettxout(funding_tx.txid_hex(), 0)
        assert funding is not None and funding.value_sat == FUNDING_SAT
        assert funding.confirmations == 1
        yield pair


def fee_of(tx: Tx, input_sat: int) -> int:
    return input_sat - sum(out.amount_sat for out in tx.outputs)


def paid_to(tx: Tx, script_pubkey: bytes) -> int:
    return sum(out.amount_sat for out in tx.outputs if out.script_pubkey == script_pubkey)


async def test_cooperative_close_pays_each_side_its_balance(pair: TwoPartyChannel) -> None:
    pair.pay(200_000_000, "coop 1")
    pair.pay(50_000_000, "coop 2")
    closing_tx, fee_sat = await pair.cooperative_close()
    assert [b.raw_tx for b in pair.b.broadcasts] == [closing_tx.serialize()]  # both agree
    confirmed = await pair.rpc.getrawtransaction_verbose(closing_tx.txid_hex())
    assert confirmed["confirmations"] == 1
    assert paid_to(closing_tx, pair.b.close_script) == 250_000  # the payee pays no fee
    assert paid_to(closing_tx, pair.a.close_script) == FUNDING_SAT - 250_000 - fee_sat


async def test_force_close_then_delayed_sweep(pair: TwoPartyChannel) -> None:
    pair.pay(300_000_000, "force 1")
    commitment_tx = await pair.force_close(pair.a, "operator asked for a force close")
    commitment_fee = fee_of(commitment_tx, FUNDING_SAT)

    # The payee's output of the payer's commitment is its own at once (static remote key).
    b_sweep = pair.sweep_to_remote(pair.b, commitment_tx)
    await pair.broadcast(b_sweep)
    assert 300_000 - 2_000 < b_sweep.outputs[0].amount_sat < 300_000

    # The payer's own output waits to_self_delay blocks: refused one block early.
    a_sweep = pair.sweep_to_local(pair.a, commitment_tx)
    await pair.mine(TO_SELF_DELAY - 2)  # the commitment now has TO_SELF_DELAY - 1 confirmations
    with pytest.raises(RpcError) as early:
        await pair.broadcast(a_sweep)
    assert early.value.code == -26 and "non-BIP68-final" in early.value.message
    await pair.mine(1)
    await pair.broadcast(a_sweep)
    await pair.mine(1)
    a_to_local = FUNDING_SAT - 300_000 - commitment_fee
    assert a_to_local - 2_000 < a_sweep.outputs[0].amount_sat < a_to_local


async def test_breach_is_punished_by_the_penalty(pair: TwoPartyChannel) -> None:
    pair.pay(100_000_000, "breach 1")
    # The payer keeps a copy of its state, pays more, then "restores the backup": the
    # restored channel holds a commitment it has revoked since, one that pays it more.
    backup = copy.deepcopy(pair.a.snapshots[-1])
    pair.pay(400_000_000, "breach 2")
    cheater = Channel.restore(backup)
    revoked = next(a for a in cheater.fail("restored from backup") if isinstance(a, Broadcast))
    revoked_tx = Tx.parse(revoked.raw_tx)
    # The chain cannot know the state was revoked: the old commitment is valid there.
    await pair.broadcast(revoked_tx)
    await pair.mine(1)

    penalty = pair.penalty(pair.b, revoked_tx)
    await pair.broadcast(penalty)
    cheater_to_local = FUNDING_SAT - 100_000 - fee_of(revoked_tx, FUNDING_SAT)
    assert cheater_to_local - 2_000 < penalty.outputs[0].amount_sat < cheater_to_local
    await pair.broadcast(pair.sweep_to_remote(pair.b, revoked_tx))
    await pair.mine(1)

    # The cheater's own delayed sweep can never confirm: its output is gone.
    cheater_party = pair.a
    cheater_party.channel = cheater
    cheat_sweep = pair.sweep_to_local(cheater_party, revoked_tx)
    await pair.mine(TO_SELF_DELAY)
    with pytest.raises(RpcError) as spent:
        await pair.broadcast(cheat_sweep)
    assert spent.value.code == -25  # bad-txns-inputs-missingorspent


async def test_penalty_needs_the_revocation_secret(pair: TwoPartyChannel) -> None:
    """The current commitment is not revoked: the payee holds no secret for it, so no
    penalty can be built (channel/'s consensus tests show the node refusing a penalty
    signed with the wrong revocation key)."""
    pair.pay(100_000_000, "honest 1")
    commitment_tx = await pair.force_close(pair.a, "honest force close")
    with pytest.raises(ShachainError, match="no stored secret"):
        pair.penalty(pair.b, commitment_tx)
