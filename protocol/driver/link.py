"""The peer link as the driver sees it: an ordered, reliable stream of ``PeerFrame``s.

The gRPC edge (hub) and the gRPC transport (client) each give the driver one
``FrameLink`` per connected peer; tests use ``memory_link_pair``. A frame is a batch of
protocol messages in order (DESIGN.md, "Concurrency": one frame per batch is where the
gRPC throughput comes from). ``LinkClosed`` is the only error a link raises: the
driver then calls ``Channel.disconnected()`` and waits for a new link.
"""

from __future__ import annotations

from typing import Protocol

import trio

from proto import peer_pb2


class LinkClosed(Exception):
    """The link is gone (peer disconnected, stream cancelled, or closed by us)."""


class FrameLink(Protocol):
    async def send(self, frame: peer_pb2.PeerFrame) -> None:
        """Queue one frame to the peer, in order. Raises ``LinkClosed``."""

    async def receive(self) -> peer_pb2.PeerFrame:
        """The next frame from the peer. Raises ``LinkClosed`` when the link ends."""

    async def aclose(self) -> None:
        """Close our side; the peer's ``receive`` then raises ``LinkClosed``."""


class MemoryLink:
    """One end of an in-process link (tests, and two parties in one process)."""

    def __init__(self, outgoing: trio.MemorySendChannel[peer_pb2.PeerFrame],
                 incoming: trio.MemoryReceiveChannel[peer_pb2.PeerFrame]) -> None:
        self._outgoing = outgoing
        self._incoming = incoming

    async def send(self, frame: peer_pb2.PeerFrame) -> None:
        try:
            # A copy: the receiver must not share mutable protobufs with the sender.
            await self._outgoing.send(peer_pb2.PeerFrame.FromString(frame.SerializeToString()))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkClosed("peer link closed") from exc

    async def receive(self) -> peer_pb2.PeerFrame:
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            raise LinkClosed("peer link closed") from exc

    async def aclose(self) -> None:
        await self._outgoing.aclose()
        await self._incoming.aclose()


def memory_link_pair(buffer_frames: int = 64) -> tuple[MemoryLink, MemoryLink]:
    """Two connected ends; each frame sent on one is received on the other."""
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[peer_pb2.PeerFrame](buffer_frames)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[peer_pb2.PeerFrame](buffer_frames)
    return MemoryLink(a_to_b_send, b_to_a_receive), MemoryLink(b_to_a_send, a_to_b_receive)
