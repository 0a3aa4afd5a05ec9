"""What a handler returns: actions plus the ``PERSIST`` marker (see ``protocol.channel``)."""

from __future__ import annotations

from protocol.actions import Action


class PersistMarker:
    """Placeholder for this input's ``Persist``; the dispatcher fills in the snapshot."""

    def __repr__(self) -> str:
        return "PERSIST"


PERSIST = PersistMarker()
Step = list[Action | PersistMarker]
