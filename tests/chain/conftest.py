"""Fixtures for the chain tests: the chain client on the embedded node over HTTP.

The client is built with no HTTP timeout, so that tests may run under trio's
autojumping MockClock: there, any deadline would fire as soon as every task waits
on a socket. A recording listener shows exactly what the follower fed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from channel.chain import BitcoinRpc
from channel.chain.follower import RpcChainSource
from channel.tx import Tx


@pytest.fixture
async def rpc(regtest_rpc: Any) -> AsyncIterator[BitcoinRpc]:
    async with BitcoinRpc(
        regtest_rpc.url, cookie_file=Path(regtest_rpc.cookie_path), timeout_s=None
    ) as client:
        yield client


@pytest.fixture
def source(rpc: BitcoinRpc) -> RpcChainSource:
    return RpcChainSource(rpc)


class RecordingListener:
    """A BlockListener that writes down every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.txids: dict[str, list[str]] = {}

    def block_connected(self, height: int, block_hash: str, txs: Sequence[Tx]) -> None:
        self.calls.append(("connect", height, block_hash))
        self.txids[block_hash] = [tx.txid_hex() for tx in txs]

    def block_disconnected(self, height: int, block_hash: str) -> None:
        self.calls.append(("disconnect", height, block_hash))
