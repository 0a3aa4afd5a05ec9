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
