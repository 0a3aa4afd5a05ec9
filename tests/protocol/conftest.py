"""Hypothesis profiles for the protocol property tests.

``ci`` (the default) runs a few hundred stateful examples of ~40 steps each: thousands
of random schedules per run. ``dev`` is a quick smoke run:
``HYPOTHESIS_PROFILE=dev pytest tests/protocol``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=1000,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
