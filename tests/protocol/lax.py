"""``lax()``: a malicious peer's own Channel with its acceptance rules switched off.

A peer that signs its own malicious states does not run our checks: it adds what it
cannot afford, raises the fee past what it can pay, offers an HTLC expiring now. The
simplest faithful model is our own ``Channel`` with the rule functions of
``protocol.rules`` replaced by "no problem" while the malicious side acts (its
commands, and its handling of what the honest side sends). Everything else stays real:
its messages are well formed and validly signed, and its Channel still builds and signs
real commitments. The honest side calls the real rules: the patch is lifted before
every honest call (single-threaded, so nothing else can observe it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from protocol import closing, rules

_SWITCHED_OFF = ("add_problem", "fee_problem", "policy_problem", "settle_problem",
                 "dust_problem")


def _no_problem(*args: Any, **kwargs: Any) -> None:
    return None


def _settle_anything(d: Any, sender: Any, htlc_id: int,
                     preimage: bytes | None) -> tuple[Any, None]:
    """Settle any HTLC it knows, committed or not (the honest side must refuse)."""
    return d.book.htlcs.get((sender.other(), htlc_id)), None


@contextmanager
def lax() -> Iterator[None]:
    saved = {name: getattr(rules, name) for name in _SWITCHED_OFF}
    min_fee_sat = closing.min_fee_sat
    try:
        for name in _SWITCHED_OFF:
            setattr(rules, name, _no_problem)
        rules.settle_problem = _settle_anything
        closing.min_fee_sat = lambda ch, fee: 0
        yield
    finally:
        for name, fn in saved.items():
            setattr(rules, name, fn)
        closing.min_fee_sat = min_fee_sat
