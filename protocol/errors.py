"""Protocol errors, in the manner of h11: who did something wrong, and what happens next.

``LocalProtocolError``: our own caller asked for something the protocol forbids (a
command in the wrong state, an HTLC above our balance). Nothing was sent and nothing
changed; the caller can fix its request.

``RemoteProtocolError``: the peer sent something the protocol forbids (BOLT #2 "the
receiving node ... MUST/SHOULD send an error / warning"). Nothing changed either
(DESIGN rule 4: every check runs before any mutation). ``disposition`` tells the
driver what to do with the channel:

- ``IGNORE``: drop the message, keep going (e.g. a redundant ``channel_ready``).
- ``WARN``: send a BOLT #1 ``warning`` and drop the connection; the channel survives
  and ``channel_reestablish`` resynchronises it.
- ``CLOSE``: send an ``error`` and fail the channel (force close).

The state machine never acts on a disposition itself: it raises, and the driver (hub or
client) calls ``Channel.fail()`` or ``Channel.disconnected()`` as the disposition says.
"""

from __future__ import annotations

import enum


class Disposition(enum.Enum):
    """What happens to the channel after a refused input."""

    IGNORE = "ignore"
    WARN = "warn"
    CLOSE = "close"


class ProtocolError(Exception):
    """Base class: a refused input, with a readable message and a disposition."""

    def __init__(self, message: str, disposition: Disposition = Disposition.CLOSE) -> None:
        super().__init__(message)
        self.message = message
        self.disposition = disposition

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.disposition.name})"


class LocalProtocolError(ProtocolError):
    """Our caller asked for something the protocol (or our policy) forbids.

    Defaults to ``IGNORE``: a refused command leaves the channel untouched.
    """

    def __init__(self, message: str, disposition: Disposition = Disposition.IGNORE) -> None:
        super().__init__(message, disposition)


class AwaitingAcknowledgement(LocalProtocolError):
    """A refused add that the peer's next ``revoke_and_ack`` can make acceptable: the
    rule is about what the peer has acknowledged, not about the balance
    (``protocol.rules.crossing_problem``). A caller may hold the HTLC and offer it
    again once the peer has answered; nothing was sent and nothing changed."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; see the module docstring."""
