"""The pure watch object of one channel: BOLT #5 on chain (see core.py's theory of
operation and docs/dev/watch-api.md).

- ``ChannelWatch`` (core.py): fed blocks, the feerate and the channel's data; returns
  ``Broadcast``s and events; ``to_json``/``from_json``.
- types.py: its inputs (``LocalCommitment``, ``RemoteCommitment``,
  ``RevokedCommitment``, ``WatchConfig``) and outputs (``Broadcast``, the events,
  ``Reversed``).
- resolve.py: the chain as it is -> claims and events; claims.py: pricing, fee bumps,
  splitting under the weight limit; codec.py: JSON forms.
- listener.py: ``WatchSet``, many channels' watches behind one ``BlockListener``.
"""

from channel.watch.core import ChannelWatch
from channel.watch.listener import WatchSet
from channel.watch.types import (
    ANTI_REORG_DELAY,
    MAX_STANDARD_TX_WEIGHT,
    Broadcast,
    ChannelClosedOnChain,
    ChannelResolved,
    ClaimBuried,
    ClaimConfirmed,
    ClaimUneconomical,
    FundingConfirmed,
    FundingDepthReached,
    GoOnChain,
    LocalCommitment,
    OutputLost,
    PreimageLearned,
    RemoteCommitment,
    Reversed,
    RevokedCommitment,
    WatchConfig,
    WatchEvent,
    WatchOutput,
)

__all__ = [
    "ANTI_REORG_DELAY",
    "MAX_STANDARD_TX_WEIGHT",
    "Broadcast",
    "ChannelClosedOnChain",
    "ChannelResolved",
    "ChannelWatch",
    "ClaimBuried",
    "ClaimConfirmed",
    "ClaimUneconomical",
    "FundingConfirmed",
    "FundingDepthReached",
    "GoOnChain",
    "LocalCommitment",
    "OutputLost",
    "PreimageLearned",
    "RemoteCommitment",
    "Reversed",
    "RevokedCommitment",
    "WatchConfig",
    "WatchEvent",
    "WatchOutput",
    "WatchSet",
]
