"""The towers a ``chanhub`` client uses, kept in its data directory (docs/tower.md).

``<data dir>/towers.json`` (mode 0600) lists each tower once, by address: its pin
(the certificate's SHA-256 fingerprint, or the certificate itself) and the node id it
showed when it was registered, so a later connection to a tower with another key is
refused like a wrong certificate. Each tower's appointments wait in its own outbox,
``<data dir>/towers/<host_port>/outbox`` (``client.tower.Outbox``), until it takes
them. The file is rewritten whole (temporary file, fsync, rename): a crash leaves the
old list or the new one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from client import errors
from client.transport import HubPin
from protocol.driver.wire_auth import cert_der, cert_fingerprint_sha256, normalize_fingerprint

TOWERS_FILE = "towers.json"
TOWERS_DIR = "towers"


@dataclass(frozen=True)
class TowerEntry:
    """One tower: ``target`` is host:port; exactly one of ``tls_cert_sha256`` (hex) and
    ``tls_cert_pem`` pins it; ``tower_node_id`` is hex (empty before registration)."""

    target: str
    tls_cert_sha256: str = ""
    tls_cert_pem: str = ""
    tower_node_id: str = ""

    def pin(self) -> HubPin:
        if self.tls_cert_pem:
            return HubPin(cert_pem=self.tls_cert_pem.encode())
        return HubPin.from_fingerprint(self.tls_cert_sha256)

    @property
    def pin_text(self) -> str:
        return ("cert " if self.tls_cert_pem else "sha256 ") + self.fingerprint[:16]

    @property
    def fingerprint(self) -> str:
        """The pinned certificate's SHA-256 fingerprint (hex), however it is pinned."""
        if self.tls_cert_pem:
            return cert_fingerprint_sha256(self.tls_cert_pem.encode())
        return normalize_fingerprint(self.tls_cert_sha256)

    def node_id(self) -> bytes | None:
        return bytes.fromhex(self.tower_node_id) if self.tower_node_id else None


def parse_tower(target: str, cert_file: str | None, fingerprint: str | None) -> TowerEntry:
    """The entry for ``--tower TARGET`` with ``--tower-cert``/``--tower-fingerprint``;
    ``InvalidRequest`` names what is wrong (nothing is read but the certificate)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidRequest(f"--tower {target!r}: not host:port")
    if (cert_file is None) == (fingerprint is None):
        raise errors.InvalidRequest("pin the tower: --tower-cert FILE or "
                                    "--tower-fingerprint HEX (one of them)")
    if fingerprint is not None:
        try:
            return TowerEntry(target, tls_cert_sha256=normalize_fingerprint(fingerprint))
        except ValueError as exc:
            raise errors.InvalidRequest(f"--tower-fingerprint: {exc}") from None
    assert cert_file is not None
    try:
        pem = Path(cert_file).read_bytes()
        cert_der(pem)
    except OSError as exc:
        raise errors.InvalidRequest(f"--tower-cert {cert_file}: {exc.strerror}") from None
    except ValueError:
        raise errors.InvalidRequest(f"--tower-cert {cert_file}: not a PEM or DER "
                                    "certificate") from None
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise errors.InvalidRequest(f"--tower-cert {cert_file}: give the PEM form") from None
    return TowerEntry(target, tls_cert_pem=text)


def load_towers(data_dir: Path) -> list[TowerEntry]:
    path = data_dir / TOWERS_FILE
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise errors.InvalidRequest(f"{path}: unreadable ({exc})") from None
    try:
        return [TowerEntry(**row) for row in rows]
    except TypeError as exc:
        raise errors.InvalidRequest(f"{path}: not a list of towers ({exc})") from None


def save_towers(data_dir: Path, towers: list[TowerEntry]) -> None:
    path = data_dir / TOWERS_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps([asdict(t) for t in towers], indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def with_tower(towers: list[TowerEntry], entry: TowerEntry) -> list[TowerEntry]:
    """``towers`` with ``entry`` in place of the one at its address (or appended)."""
    kept = [t for t in towers if t.target != entry.target]
    if len(kept) == len(towers):
        return [*towers, entry]
    return [entry if t.target == entry.target else t for t in towers]


def outbox_dir(data_dir: Path, target: str) -> Path:
    """Where the appointments for the tower at ``target`` wait (one outbox a tower)."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in target)
    return data_dir / TOWERS_DIR / safe / "outbox"
