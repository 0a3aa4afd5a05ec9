"""The chain behind Chanhub: bitcoind's JSON-RPC, reached only through here.

`BitcoinRpc` (rpc.py) is the one async client used by the hub, the client SDK and
the regtest harness; `units` converts bitcoind's BTC decimals to integer satoshis.
This subpackage is the only part of channel/ that does I/O.
"""

from channel.chain.rpc import (
    BitcoinRpc,
    ChainError,
    ChainUnavailable,
    MempoolAcceptResult,
    RpcAuthError,
    RpcError,
    TxOutInfo,
)
from channel.chain.units import btc_to_sat, sat_to_btc

__all__ = [
    "BitcoinRpc",
    "ChainError",
    "ChainUnavailable",
    "MempoolAcceptResult",
    "RpcAuthError",
    "RpcError",
    "TxOutInfo",
    "btc_to_sat",
    "sat_to_btc",
]
