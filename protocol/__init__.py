"""protocol: the two-party channel update state machine (BOLT #2), sans-I/O.

The hub and the client drive one ``Channel`` per channel with nothing but received
messages (``proto.peer_pb2.PeerMessage``), local commands, the current block height, and
the actions it returns (``Send``, ``Persist``, ``Watch``, ``Broadcast`` and events). See
``protocol.channel`` for the driving loop, ``protocol.table`` for the states and
transitions, ``protocol.errors`` for what a refused input means for the channel.
"""

from protocol.actions import (
    Action,
    Broadcast,
    ChannelClosed,
    ChannelFailed,
    ChannelOpened,
    Event,
    FundingNeeded,
    FundingSigned,
    HtlcDeadline,
    HtlcFailed,
    HtlcFulfilled,
    HtlcReceived,
    PeerWarning,
    Persist,
    Send,
    Watch,
)
from protocol.channel import Channel
from protocol.config import InvalidConfig, LocalConfig
from protocol.errors import (
    AwaitingAcknowledgement,
    Disposition,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.table import ChannelState, LinkState

__all__ = [
    "Action", "AwaitingAcknowledgement", "Broadcast", "Channel", "ChannelClosed",
    "ChannelFailed", "ChannelOpened", "ChannelState", "Disposition", "Event",
    "FundingNeeded", "FundingSigned", "HtlcDeadline", "HtlcFailed", "HtlcFulfilled",
    "HtlcReceived", "InvalidConfig", "LinkState", "LocalConfig", "LocalProtocolError",
    "PeerWarning", "Persist", "ProtocolError", "RemoteProtocolError", "Send", "Watch",
]
