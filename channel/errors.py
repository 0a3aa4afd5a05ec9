"""Errors raised by channel/.

One small tree, so callers can catch everything channel-related with one clause::

    ChannelError
     +-- InvalidSignature   a signature we received does not verify (the message
     |                      names which one: commitment, HTLC #i, closing...)
     +-- ShachainError      a per-commitment secret does not derive the secrets we
     |                      already hold, or a secret we do not have was asked for
     +-- TransactionError   a transaction cannot be built as asked (the funder cannot
                            pay the fee, an output would be dust, a script mismatch)

Every function in channel/ that refuses input raises one of these and changes
nothing (the values are immutable, and the one mutable object, RevocationStore,
validates before it stores).
"""

from __future__ import annotations


class ChannelError(Exception):
    """Base of every error channel/ raises on purpose."""


class InvalidSignature(ChannelError):
    """A signature received from the peer does not verify."""


class ShachainError(ChannelError):
    """A per-commitment secret is inconsistent with the ones stored, or unknown."""


class TransactionError(ChannelError):
    """A transaction cannot be built from the given inputs."""
