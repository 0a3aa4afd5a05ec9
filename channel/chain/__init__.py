"""The chain behind Chanhub: bitcoind's JSON-RPC, reached only through here.

`BitcoinRpc` (rpc.py) is the one async client used by the hub, the client SDK and
the regtest harness; `units` converts bitcoind's BTC decimals to integer satoshis.
On top of it, written once for the hub and the SDK (docs/dev/chain-api.md):

- `ChainFollower` (follower.py): new blocks and reorgs fed to `BlockListener`s;
- `ConfirmationTracker` (confirmations.py): depth and spend events, reversible;
- `RpcBroadcaster` (broadcaster.py): publish and rebroadcast until confirmed;
- `RpcFeeEstimator` (fees.py): estimatesmartfee in sat/kw, a fallback, a floor;
- `OnchainWallet` (wallet.py): BIP84 keys, coins from blocks, funding, sending;
- `ChainServices` (services.py): all of the above wired for one party, one
  JSON-able state bundle, persisted after every block.

This subpackage is the only part of channel/ that does I/O.
"""

from channel.chain.block import Block, BlockHeader, BlockParseError
from channel.chain.broadcaster import BroadcastRefused, PendingTx, RpcBroadcaster
from channel.chain.confirmations import (
    ChainEvent,
    ConfirmationTracker,
    OutpointSpent,
    OutpointUnspent,
    TxConfirmed,
    TxMismatch,
    TxUnconfirmed,
)
from channel.chain.fees import FEERATE_FLOOR_SAT_PER_KW, RpcFeeEstimator
from channel.chain.follower import (
    ChainFollower,
    ChainMismatch,
    RpcChainSource,
    SyncResult,
    checkpoint_at,
)
from channel.chain.interfaces import (
    BlockListener,
    BlockRef,
    Broadcaster,
    ChainSource,
    FeeEstimator,
    TipListener,
)
from channel.chain.keychain import AddressError
from channel.chain.rpc import (
    BitcoinRpc,
    ChainError,
    ChainUnavailable,
    MempoolAcceptResult,
    RpcAuthError,
    RpcError,
    TxOutInfo,
)
from channel.chain.services import ChainServices
from channel.chain.units import btc_to_sat, sat_to_btc
from channel.chain.wallet import (
    Balance,
    InsufficientFunds,
    OnchainWallet,
    Utxo,
    WalletError,
)

__all__ = [
    "FEERATE_FLOOR_SAT_PER_KW",
    "AddressError",
    "Balance",
    "BitcoinRpc",
    "Block",
    "BlockHeader",
    "BlockListener",
    "BlockParseError",
    "BlockRef",
    "BroadcastRefused",
    "Broadcaster",
    "ChainError",
    "ChainEvent",
    "ChainFollower",
    "ChainMismatch",
    "ChainServices",
    "ChainSource",
    "ChainUnavailable",
    "ConfirmationTracker",
    "FeeEstimator",
    "InsufficientFunds",
    "MempoolAcceptResult",
    "OnchainWallet",
    "OutpointSpent",
    "OutpointUnspent",
    "PendingTx",
    "RpcAuthError",
    "RpcBroadcaster",
    "RpcChainSource",
    "RpcError",
    "RpcFeeEstimator",
    "SyncResult",
    "TipListener",
    "TxConfirmed",
    "TxMismatch",
    "TxOutInfo",
    "TxUnconfirmed",
    "Utxo",
    "WalletError",
    "btc_to_sat",
    "checkpoint_at",
    "sat_to_btc",
]
