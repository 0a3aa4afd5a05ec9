"""kill -9 mid-batch: a real child process (both parties, paying without end) kills
itself inside a group commit, after the batch's statements ran and before COMMIT.
After each kill both parties restart from their stores alone: every update is either
there or not (a snapshot and the application row written with it are both stored or
both absent), the channel re-establishes without failing, every HTLC settles, and the
balances add up to the channel's capacity to the millisatoshi."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import trio

from channel.commitment import Side
from protocol.driver.link import memory_link_pair
from regtest.node import Node
from tests.driver.crash_child import payment_labels
from tests.driver.parties import Party, open_funded_channel, secret, until, update_log
from tests.driver.test_driver import balances, quiescent

ROOT = Path(__file__).resolve().parents[2]
# (victim writer, commit to die in): both parties, early and deeper into the run.
FUNDING_SAT = 10_000_000
KILL_POINTS = [("a", 4), ("b", 7), ("a", 15), ("b", 26)]


def logged_parties(urls: tuple[str, str], height: int, invoices: dict[bytes, bytes]
                   ) -> tuple[Party, Party]:
    return (Party("a", urls[0], "b", invoices, lambda: height, logged=True),
            Party("b", urls[1], "a", invoices, lambda: height, logged=True))


def check_all_or_nothing(party: Party) -> None:
    (stored,) = party.store.load_channels()  # decrypts: no torn or foreign blob
    logged = party.db.read_sync(lambda c: c.execute(
        sa.select(sa.func.max(update_log.c.update_id))
        .where(update_log.c.channel_key == stored.channel_key)).scalar_one())
    assert logged == stored.update_id, (party.name, logged, stored.update_id)


def settled(*each: Party) -> bool:
    return quiescent(*each) and all(
        not p.driver.channel.latest_view(Side.LOCAL).htlcs for p in each)


async def test_kill_9_mid_batch_then_restart(store_url_pair: tuple[str, str],
                                             regtest_node: Node, autojump_clock: Any) -> None:
    invoices: dict[bytes, bytes] = {}
    height = int(regtest_node.call("getblockcount"))
    a, b = logged_parties(store_url_pair, height, invoices)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await open_funded_channel(a, b, regtest_node, FUNDING_SAT)
        height = int(regtest_node.call("getblockcount"))
        await a.stop()
        await b.stop()

    for round_number, (victim, kill_at) in enumerate(KILL_POINTS):
        label = f"crash {round_number}"
        child = await trio.run_process(
            [sys.executable, "-m", "tests.driver.crash_child", *store_url_pair, str(height),
             victim, str(kill_at), label],
            cwd=ROOT, check=False, capture_stdout=True, capture_stderr=True)
        assert child.returncode == -9, child.stderr.decode()[-3000:]
        for lab in payment_labels(label):
            preimage = secret(f"preimage {lab}")
            invoices[hashlib.sha256(preimage).digest()] = preimage

        await recover_and_pay(*logged_parties(store_url_pair, height, invoices), label)


async def recover_and_pay(a: Party, b: Party, label: str) -> None:
    check_all_or_nothing(a)
    check_all_or_nothing(b)
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await until(lambda: a.link_up() and b.link_up())
        b.settle_restored()
        await until(lambda: settled(a, b))
        assert not a.failed_channels() and not b.failed_channels()
        a_local, a_remote = balances(a)
        assert a_local + a_remote == FUNDING_SAT * 1000
        assert balances(b) == (a_remote, a_local)
        # ... and it keeps paying.
        paid = [a.pay(3_000_000, f"{label} after {i}") for i in range(3)]
        await until(lambda: all(h in a.fulfilled for h in paid) and settled(a, b))
        assert balances(a) == (a_local - 9_000_000, a_remote + 9_000_000)
        await a.stop()
        await b.stop()
