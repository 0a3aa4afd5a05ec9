"""``chanhub-tower``: the watchtower (issue 10, proto/tower.proto, docs/tower.md).

A separate process (``python -m hub.tower``), or a service inside ``chanhubd --tower``.
Channel parties register with it over gRPC (TLS, node-key authentication, a quota of
stored appointments each) and send an encrypted appointment after each revocation;
the tower follows the chain and, when a revoked commitment confirms, decrypts its
penalties and broadcasts them, HTLC outputs and second-stage outputs included.

- ``service.py``: ``TowerService`` (store, chain follower, gRPC listener), ``TowerSettings``;
- ``watcher.py``: ``TowerWatcher``, the breach search and the broadcasts;
- ``store.py``: ``TowerStore`` (SQLite or PostgreSQL, alembic branch ``tower``);
- ``__main__.py``: the command line.

The sealing both sides share is ``protocol.driver.appointment``; the client's half
(building and delivering appointments) is ``client.tower``.
"""

from hub.tower.service import TowerService, TowerSettings, TowerStarted

__all__ = ["TowerService", "TowerSettings", "TowerStarted"]
