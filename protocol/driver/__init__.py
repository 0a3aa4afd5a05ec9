"""protocol/driver: the I/O wing every channel party runs around ``protocol.Channel``.

Hub and client alike: execute a channel's actions in order (a ``Persist`` durable
before anything after it), the channel store with group commit and encrypted
snapshots, restore after a restart, reestablish on reconnect, and the peer link that
carries ``PeerFrame``s. Imports the pure core (``protocol``, ``channel``), never the
reverse (DESIGN.md, "Layers").
"""
