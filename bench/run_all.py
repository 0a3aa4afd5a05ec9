"""Run every benchmark in bench/ and print their figures (`make bench`).

Each benchmark is a module with a `main()` that prints its own figures; they run
one after another in this process so their numbers share one machine state.
"""

from __future__ import annotations

import importlib
import platform
import sys

BENCHMARKS = ("bench.node_bench", "bench.channel_bench", "bench.protocol_bench", "bench.edge_bench",
              "bench.store_bench", "bench.hub_bench")


def main() -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(name)
        module.main()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
