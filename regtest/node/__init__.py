"""An embedded `bitcoind -regtest` look-alike: real consensus, bitcoind's JSON-RPC.

Modules, one job each:
  params       regtest consensus/policy constants, amount conversions
  blocks       header bytes, merkle roots, coinbase, proof-of-work grinding
  validation   transaction rules (CheckTransaction, finality, BIP68, inputs,
               standardness, scripts through btclib's engine)
  script_errors  btclib's script errors named and worded as Core's
  storage      SQLite (WAL) persistence, one transaction per block
  chainstate   block index, active chain, UTXO set, block validation, reorgs
  mempool      acceptance in Core's order, ancestry and chain limits, removal
  replacement  full RBF as Core v28: its rules and reject texts
  keys         BIP32 keys of Core's four address types, descriptors, signing
  wallet       the faucet wallet: coins, selection, spends
  node         `Node`: the above behind one lock, mining, the in-process API
  rpc_*        bitcoind's methods; rpc_help their declared arguments (help
               texts, type checks); jsonfmt their JSON shapes
  server       `RpcServer`: HTTP + Basic auth (cookie) in a background thread
"""

from regtest.node.errors import NodeRpcError
from regtest.node.node import Node
from regtest.node.server import RpcServer

__all__ = ["Node", "NodeRpcError", "RpcServer"]
