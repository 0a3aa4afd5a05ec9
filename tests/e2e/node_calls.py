"""Synchronous JSON-RPC calls to a harness node process, for the e2e tests (each test
drives real processes from plain pytest functions, outside trio)."""

from __future__ import annotations

from typing import Any

import trio

from regtest.harness import NodeEndpoint


def node_call(node: NodeEndpoint, method: str, *params: Any) -> Any:
    async def run() -> Any:
        async with node.rpc() as rpc:
            return await rpc.call(method, *params)

    return trio.run(run)


def spenders_in_mempool(node: NodeEndpoint, txid: str | None) -> list[str]:
    """Mempool transactions spending an output of ``txid``."""
    return [t for t in node_call(node, "getrawmempool")
            if any(i.get("txid") == txid
                   for i in node_call(node, "getrawtransaction", t, True)["vin"])]
