"""Suite-wide fixtures and settings.

The regtest plugin gives `regtest_node`, `regtest_rpc` and `regtest_clock`.

Hypothesis profiles (one global setting, so they live here, for every property test):
- ``ci`` (the default, what `make test` and CI run): 1000 examples, stateful runs of
  up to 50 steps (tens of thousands of random protocol steps per run), derandomized
  so a run is reproducible: the same commit gives the same examples every time;
- ``soak``: random and five times longer, to look for new counterexamples by hand
  (``HYPOTHESIS_PROFILE=soak .venv/bin/pytest tests/protocol``); a failure prints the
  blob that reproduces it;
- ``dev``: a quick smoke run while editing.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings

pytest_plugins = ["regtest.pytest_plugin"]

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile(
    "ci", max_examples=1000, stateful_step_count=50, derandomize=True, **_COMMON
)
settings.register_profile("soak", max_examples=5000, stateful_step_count=80, **_COMMON)
settings.register_profile("dev", max_examples=20, stateful_step_count=25, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# pytest-trio's autojump_clock jumps at a threshold of 0: while a task waits on a thread
# (the store's writer, a node call) and no deadline is set, its run loop polls epoll
# with a zero timeout, a busy loop that takes a whole core from the thread it waits
# for (on 2 cores, the suite took twice as long). A threshold of 1 ms of real idleness
# still jumps every virtual wait at once, and a thread's completion wakes the loop.
AUTOJUMP_THRESHOLD_SECONDS = 0.001


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=AUTOJUMP_THRESHOLD_SECONDS)
