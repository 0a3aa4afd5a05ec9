"""`chanhub init|serve --tower`, `chanhub tower add|list|remove` against a real `chanhub-tower`
process: a wrong pin, an unreachable tower or a pin without a tower is one error line,
exit status 1 and nothing stored; a good one is registered and kept for later commands,
which then need the chain (their penalties pay our wallet)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from client.tower_config import TOWERS_FILE, load_towers
from regtest.harness import (
    HubEndpoint,
    NodeEndpoint,
    TowerEndpoint,
    chanhub_command,
    client_env,
    free_port,
    stop_tower,
)


def chanhub(datadir: Path, hub: HubEndpoint, *args: str,
            node: NodeEndpoint | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(chanhub_command(datadir, hub, *args, node=node), env=client_env(),
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_a_tower_is_registered_stored_and_listed(tmp_path: Path, node_process: NodeEndpoint,
                                                 hub_process: HubEndpoint,
                                                 tower_process: TowerEndpoint) -> None:
    alice = tmp_path / "alice"
    tower = tower_process
    wrong = "ab" * 32

    refused = one_error_line(chanhub(alice, hub_process, "init", "--tower", tower.target,
                                     "--tower-fingerprint", wrong))
    assert tower.target in refused and "UNAUTHENTICATED" in refused
    assert not (alice / TOWERS_FILE).exists()
    down = f"127.0.0.1:{free_port()}"
    unreachable = one_error_line(chanhub(alice, hub_process, "init", "--tower", down,
                                         "--tower-fingerprint", tower.tls_cert_sha256))
    assert down in unreachable and "UNAVAILABLE" in unreachable
    unpinned = one_error_line(chanhub(alice, hub_process, "init", "--tower", tower.target))
    assert "--tower-cert FILE or --tower-fingerprint HEX" in unpinned
    assert not (alice / TOWERS_FILE).exists()

    done = chanhub(alice, hub_process, "--json", "init", "--tower", tower.target,
                   "--tower-fingerprint", tower.tls_cert_sha256)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tower"] == tower.target
    [stored] = load_towers(alice)
    assert (stored.target, stored.tower_node_id) == (tower.target, tower.tower_node_id.hex())
    assert (alice / TOWERS_FILE).stat().st_mode & 0o777 == 0o600

    listed = chanhub(alice, hub_process, "--json", "tower", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["registered"] is True and row["status"] == "ok"
    assert (row["appointments"], row["pending"]) == (0, 0)
    assert row["quota"] == 100_000 and row["tower_node_id"] == tower.tower_node_id.hex()

    # the same tower pinned by its certificate instead: one entry, replaced
    added = chanhub(alice, hub_process, "--json", "tower", "add", tower.target,
                    "--cert", str(tower.tls_cert_file))
    assert added.returncode == 0, added.stderr
    [stored] = load_towers(alice)
    assert stored.tls_cert_pem and stored.fingerprint == tower.tls_cert_sha256

    # a command that goes online needs the chain once a tower is set
    needs_chain = one_error_line(chanhub(alice, hub_process, "balance"))
    assert "give --bitcoind-rpc" in needs_chain
    # serve registers its --tower before it goes online: refused ones stop it there
    assert "--tower needs --bitcoind-rpc" in one_error_line(chanhub(
        alice, hub_process, "serve", "--tower", tower.target, "--tower-fingerprint",
        tower.tls_cert_sha256))
    assert down in one_error_line(chanhub(alice, hub_process, "serve", "--tower", down,
                                          "--tower-fingerprint", tower.tls_cert_sha256,
                                          node=node_process))
    assert [t.target for t in load_towers(alice)] == [tower.target]

    # a tower that went away: the table still shows it, and the exit status says so
    stop_tower(tower.datadir)
    gone = chanhub(alice, hub_process, "--json", "tower", "list")
    assert gone.returncode == 1 and tower.target in gone.stderr
    [row] = json.loads(gone.stdout)
    assert row["status"] != "ok" and row["registered"] is None

    removed = chanhub(alice, hub_process, "--json", "tower", "remove", tower.target)
    assert removed.returncode == 0, removed.stderr
    assert load_towers(alice) == []
    assert "no tower at" in one_error_line(chanhub(alice, hub_process, "tower", "remove",
                                                   tower.target))
