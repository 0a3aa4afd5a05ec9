"""The kill -9 test's child: both parties in one process, paying until it dies.

``python -m tests.driver.crash_child URL_A URL_B HEIGHT VICTIM KILL_AT LABEL``: restore
both parties from their stores, reconnect, pay without end; the writer of ``VICTIM``
("a" or "b") SIGKILLs the whole process inside its ``KILL_AT``-th commit, after the
batch's statements ran and before COMMIT (the worst moment: everything written,
nothing durable). Exit status -9 is the expected outcome.
"""

from __future__ import annotations

import os
import signal
import sys

import trio
import trio.testing

from protocol.driver.link import memory_link_pair
from tests.conftest import AUTOJUMP_THRESHOLD_SECONDS
from tests.driver.parties import Party, until

PAYMENTS = 200
IN_FLIGHT = 12


def payment_labels(label: str) -> list[str]:
    return [f"{label} {i}" for i in range(PAYMENTS)]


async def main(url_a: str, url_b: str, height: int, victim: str, kill_at: int,
               label: str) -> None:
    invoices: dict[bytes, bytes] = {}
    a = Party("a", url_a, "b", invoices, lambda: height, logged=True)
    b = Party("b", url_b, "a", invoices, lambda: height, logged=True)
    writer = (a if victim == "a" else b).store.writer
    commits = 0

    def maybe_die(batch_size: int) -> None:
        nonlocal commits
        commits += 1
        if commits == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    writer.before_commit = maybe_die
    async with trio.open_nursery() as nursery:
        link_a, link_b = memory_link_pair()
        await a.start(nursery, link_a)
        await b.start(nursery, link_b)
        await until(lambda: a.link_up() and b.link_up())
        b.settle_restored()
        labels = payment_labels(label)
        sent: list[bytes] = []
        while labels:
            while labels and len(sent) - len(a.fulfilled) - len(a.failed) < IN_FLIGHT:
                sent.append(a.pay(3_000_000, labels.pop(0)))
            await a.wait_for(lambda: len(sent) - len(a.fulfilled) - len(a.failed)
                             < IN_FLIGHT)
        raise SystemExit("paid everything without being killed: KILL_AT too large")


if __name__ == "__main__":
    url_a, url_b, height, victim, kill_at, label = sys.argv[1:]
    trio.run(main, url_a, url_b, int(height), victim, int(kill_at), label,
             clock=trio.testing.MockClock(autojump_threshold=AUTOJUMP_THRESHOLD_SECONDS))
