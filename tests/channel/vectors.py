"""Loading the BOLT #3 test vectors from the shared folder beside the repository.

The JSON files live in ``<repo>/../shared/vectors/bolt3`` (see its README); the
CHANHUB_VECTORS environment variable points elsewhere when needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(
    os.environ.get(
        "CHANHUB_VECTORS",
        Path(__file__).resolve().parents[2] / ".." / "shared" / "vectors" / "bolt3",
    )
)


def load(name: str) -> Any:
    with open(VECTORS_DIR / name) as f:
        return json.load(f)


def h(value: str) -> bytes:
    """Hex from the vectors: D/E keep a 0x prefix, B/C private keys a trailing 01."""
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


def secret(value: str) -> bytes:
    """A 32-byte private key written with the compressed-key 01 marker (B/C)."""
    raw = h(value)
    return raw[:32]
