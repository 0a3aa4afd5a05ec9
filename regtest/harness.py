"""The harness wing of regtest/: bring up real processes on loopback and talk to them.

Theory of operation
-------------------
`NodeProcess` runs the embedded regtest node as a separate OS process
(`python -m regtest.node`), exactly as an operator would, and hands out a
`channel.chain.BitcoinRpc` connected to it. Readiness is signalled, not polled:
the child writes one line to a pipe whose write end it inherits (`--ready-fd`)
once its RPC server is listening, and closes it; the parent blocks on that read.
A node that dies during start-up closes the pipe without the line, which the
parent reports together with the tail of the node's log.

The hub (`python -m hub`, i.e. chanhubd) and each client (`chanhub serve`) are
started the same way, detached in their own session with their pid kept in their
data directory, so `stop_*` works from another shell. Their readiness signal is
the one JSON line they print on stdout once serving (port, TLS fingerprint, node
id, file paths); the parent blocks on that line with a deadline, never polls. The
line is kept beside the pid (`hub.json`), so a later command knows how to reach
the process without asking it.

The same functions serve the `chanhub-regtest` CLI (detached: the processes
outlive the command) and tests (attached: stopped with the test, or killed with
SIGKILL by the crash tests). This is the only code that assembles several of our
processes together; `regtest/network.py` puts node + hub + clients together.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from channel.chain import BitcoinRpc
from channel.keys import pubkey_from_secret

DEFAULT_RPC_PORT = 18443
PID_FILE = "node.pid"
PORT_FILE = "node.port"
LOG_FILE = "node.log"
COOKIE_PATH = Path("regtest") / ".cookie"


class HarnessError(Exception):
    """A process of the harness could not be started, found or stopped."""


@dataclass(frozen=True)
class NodeEndpoint:
    """Where a running node listens and how to authenticate to it."""

    datadir: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def cookie_file(self) -> Path:
        return self.datadir / COOKIE_PATH

    def rpc(self, *, timeout_s: float = 30.0) -> BitcoinRpc:
        return BitcoinRpc(self.url, cookie_file=self.cookie_file, timeout_s=timeout_s)


def free_port() -> int:
    """A loopback port the OS considers free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_node(datadir: Path, *, port: int | None = None, timeout_s: float = 60.0) -> NodeEndpoint:
    """Start `python -m regtest.node` detached from us; return once it serves RPC."""
    datadir.mkdir(parents=True, exist_ok=True)
    existing = running_node(datadir)
    if existing is not None:
        raise HarnessError(f"a node is already running on port {existing.port} (datadir {datadir})")
    port = port or DEFAULT_RPC_PORT
    read_end, write_end = os.pipe()
    log = (datadir / LOG_FILE).open("ab")
    try:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "regtest.node",
                "--datadir", str(datadir),
                "--port", str(port),
                "--ready-fd", str(write_end),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            start_new_session=True,  # the node outlives this command and its terminal
        )
    finally:
        os.close(write_end)
        log.close()
    ready = _read_ready_line(read_end, process, timeout_s)
    if not ready:
        process.wait(timeout=timeout_s)
        raise HarnessError(
            f"the node exited during start-up (code {process.returncode}); "
            f"last log lines:\n{_log_tail(datadir)}"
        )
    (datadir / PID_FILE).write_text(str(process.pid))
    (datadir / PORT_FILE).write_text(str(port))
    return NodeEndpoint(datadir, port)


def _read_ready_line(read_end: int, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    with os.fdopen(read_end, "rb") as pipe:
        # The child closes its end either after writing "ready" or by dying; both
        # end this read. A hung child is the only case the timeout covers.
        readable, _, _ = select.select([pipe], [], [], timeout_s)
        if not readable:
            process.kill()
            raise HarnessError(f"the node did not become ready within {timeout_s:.0f} s")
        return pipe.readline().startswith(b"ready")


def running_node(datadir: Path) -> NodeEndpoint | None:
    """The node started in `datadir` if its process is still alive."""
    try:
        pid = int((datadir / PID_FILE).read_text())
        port = int((datadir / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not _alive(pid):
        return None
    return NodeEndpoint(datadir, port)


def stop_node(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """Stop the node of `datadir` (SIGTERM: a clean shutdown). False if none ran."""
    return stop_pid_file(datadir / PID_FILE, signal.SIGTERM, timeout_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is one.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child: it is someone else's live process
    return reaped == 0


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    # pidfd gives a blocking wait on a process that is not our child (Linux 5.3+).
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
        if readable:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return bool(readable)
    finally:
        os.close(pidfd)


def _log_tail(datadir: Path, lines: int = 15) -> str:
    return file_tail(datadir / LOG_FILE, lines)


# ---------------------------------------------------------------------------
# Processes that announce themselves with one JSON line (chanhubd, chanhub serve)

HUB_STATE_FILE = "hub.json"
HUB_PID_FILE = "hub.pid"
HUB_LOG_FILE = "hub.log"
HUB_KEY_FILE = "hub.key"  # the 32-byte key that encrypts the hub's secrets at rest
POSTGRES_SERVER = os.environ.get("CHANHUB_TEST_POSTGRES",
                                 "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class HubEndpoint:
    """Where a running chanhubd listens, how to pin it and where its files are."""

    datadir: Path
    pid: int
    port: int
    tls_cert_sha256: str
    hub_node_id: bytes
    tls_cert_file: Path
    admin_credential_file: Path
    store_url: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "port": self.port, "tls_cert_sha256": self.tls_cert_sha256,
                "hub_node_id": self.hub_node_id.hex(), "tls_cert_file": str(self.tls_cert_file),
                "admin_credential_file": str(self.admin_credential_file),
                "store_url": self.store_url}

    @classmethod
    def from_json(cls, datadir: Path, data: dict[str, object]) -> HubEndpoint:
        return cls(datadir=datadir, pid=int(str(data["pid"])), port=int(str(data["port"])),
                   tls_cert_sha256=str(data["tls_cert_sha256"]),
                   hub_node_id=bytes.fromhex(str(data["hub_node_id"])),
                   tls_cert_file=Path(str(data["tls_cert_file"])),
                   admin_credential_file=Path(str(data["admin_credential_file"])),
                   store_url=str(data.get("store_url", "")))


def spawn_announcing(command: list[str], *, log_file: Path, timeout_s: float,
                     what: str, env: dict[str, str] | None = None
                     ) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    """Start `command` detached (its own session; stderr to `log_file`) and return it
    with the JSON object of the first line it prints on stdout. A process that exits
    or closes stdout first, or prints something else, is a `HarnessError` with the
    tail of its log."""
    log = log_file.open("ab")
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, env=env)
    finally:
        log.close()
    assert process.stdout is not None
    with process.stdout as pipe:
        # The line arrives once the process serves; EOF means it died first. The
        # deadline only covers a process that hangs during start-up.
        readable, _, _ = select.select([pipe], [], [], timeout_s)
        if not readable:
            process.kill()
            process.wait()
            raise HarnessError(f"{what} did not become ready within {timeout_s:.0f} s; "
                               f"last log lines:\n{file_tail(log_file)}")
        line = pipe.readline()
    try:
        announced = json.loads(line)
        if not isinstance(announced, dict):
            raise ValueError("not an object")
    except ValueError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
        raise HarnessError(
            f"{what} exited or printed no start-up line (code {process.poll()}); "
            f"last log lines:\n{file_tail(log_file)}") from None
    return process, announced


def hub_store_url(datadir: Path, store: str) -> str:
    """The store URL for `store` ("sqlite": a file in the hub's datadir; "postgres": a
    schema of its own on the local server, named after the datadir, created here)."""
    if store == "sqlite":
        return ""  # chanhubd's default: <data dir>/hub.sqlite
    if store != "postgres":
        raise HarnessError(f"unknown store {store!r} (sqlite or postgres)")
    schema = postgres_schema(datadir)
    _postgres_ddl(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return f"{POSTGRES_SERVER}?options=-csearch_path%3D{schema}"


def postgres_schema(datadir: Path) -> str:
    return "chanhub_" + hashlib.sha256(str(datadir.resolve()).encode()).hexdigest()[:16]


def drop_postgres_schema(datadir: Path) -> None:
    _postgres_ddl(f'DROP SCHEMA IF EXISTS "{postgres_schema(datadir)}" CASCADE')


def _postgres_ddl(statement: str) -> None:
    import sqlalchemy as sa  # only the PostgreSQL path needs it

    engine = sa.create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(statement)
    except sa.exc.SQLAlchemyError as exc:
        raise HarnessError(f"{statement} on {POSTGRES_SERVER}: {exc}") from exc
    finally:
        engine.dispose()


def start_hub(datadir: Path, node: NodeEndpoint, *, store_url: str = "",
              application: str | None = None, options: dict[str, str] | None = None,
              timeout_s: float = 60.0) -> HubEndpoint:
    """Start chanhubd (`python -m hub`) detached on an ephemeral loopback port, on the
    chain of `node`; return once it printed its start-up line. `options` are more
    chanhubd flags (option name -> value, e.g. {"minimum_depth": "1"})."""
    from protocol.driver.crypto import create_key_file

    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = running_hub(datadir)
    if existing is not None:
        raise HarnessError(f"a hub is already running on port {existing.port} "
                           f"(datadir {datadir})")
    key_file = datadir / HUB_KEY_FILE
    if not key_file.exists():
        create_key_file(key_file)
    flags = {"data_dir": str(datadir), "listen": "127.0.0.1:0",
             "chain_rpc_url": node.url, "chain_rpc_cookie_file": str(node.cookie_file),
             "key_file": str(key_file), "store_url": store_url, **(options or {})}
    command = [sys.executable, "-m", "hub"]
    if application is not None:
        command += ["--application", application]
    for name, value in flags.items():
        if value != "":
            command += ["--" + name.replace("_", "-"), value]
    process, line = spawn_announcing(command, log_file=datadir / HUB_LOG_FILE,
                                     timeout_s=timeout_s, what="chanhubd")
    hub = HubEndpoint.from_json(datadir, {**line, "pid": process.pid, "store_url": store_url})
    (datadir / HUB_STATE_FILE).write_text(json.dumps(hub.to_json()))
    (datadir / HUB_PID_FILE).write_text(str(process.pid))
    return hub


def running_hub(datadir: Path) -> HubEndpoint | None:
    """The hub started in `datadir` if its process is still alive."""
    try:
        hub = HubEndpoint.from_json(datadir, json.loads((datadir / HUB_STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return hub if _alive(hub.pid) else None


def stop_hub(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the hub of `datadir` and wait for it (it drains its writes first)."""
    return stop_pid_file(datadir / HUB_PID_FILE, signal.SIGTERM, timeout_s)


def kill_hub(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """kill -9 the hub of `datadir` (the crash tests): nothing is flushed or drained."""
    return stop_pid_file(datadir / HUB_PID_FILE, signal.SIGKILL, timeout_s)


def stop_pid_file(pid_file: Path, signum: int, timeout_s: float) -> bool:
    """Send `signum` to the process named in `pid_file` and wait for it to exit
    (SIGKILL after `timeout_s`). False if none was running."""
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signum)
    # A process paused with SIGSTOP (`pause_client`) would hold SIGTERM pending until
    # it is continued: continue it, so a stop never waits out its whole timeout.
    os.kill(pid, signal.SIGCONT)
    if not _wait_for_exit(pid, timeout_s):
        os.kill(pid, signal.SIGKILL)
        _wait_for_exit(pid, timeout_s)
    pid_file.unlink(missing_ok=True)
    return True


def file_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# Clients: `chanhub serve`, one process per client, each with its own data directory

CLIENT_STATE_FILE = "client.json"
CLIENT_PID_FILE = "client.pid"
CLIENT_LOG_FILE = "client.log"
CLIENT_INIT_MARKER = "harness-initialised"
CLIENT_WALLET_FILE = "wallet.address"  # the address the harness funds the client at
# `chanhub serve` says it is online with this line on stderr (it prints no JSON
# start-up line yet); the harness waits for that line in the client's log (client.log).
CLIENT_ONLINE_PREFIX = b"online"
# Harness clients are throwaway test wallets: one known passphrase, given through the
# environment (never a flag, which `ps` would show).
CLIENT_PASSPHRASE = "chanhub regtest client"
CLIENT_PASSPHRASE_ENV = "CHANHUB_PASSPHRASE"
CLIENT_SCRYPT_N = 2**15  # the CLI's default cost


@dataclass(frozen=True)
class ClientEndpoint:
    """A running `chanhub serve`: its data directory, pid, node id, the hub address it
    dials (a `regtest.proxy` in front of the hub when started `via_proxy`) and the
    on-chain wallet address the harness funds."""

    datadir: Path
    pid: int
    node_id: bytes
    hub_target: str
    tls_cert_file: Path
    wallet_address: str | None = None

    @property
    def command_hint(self) -> str:
        return (f"{CLIENT_PASSPHRASE_ENV}='{CLIENT_PASSPHRASE}' chanhub --data-dir "
                f"{self.datadir} --hub {self.hub_target} --tls-cert {self.tls_cert_file} "
                "<command>")


def client_env() -> dict[str, str]:
    return {**os.environ, CLIENT_PASSPHRASE_ENV: CLIENT_PASSPHRASE}


def chanhub_command(datadir: Path, hub: HubEndpoint, *args: str,
                    node: NodeEndpoint | None = None) -> list[str]:
    """The `chanhub` CLI run with this interpreter, on the client of `datadir`: it
    dials the client's link proxy when it has one running, else the hub; with `node`
    it follows that chain itself (wallet, open, force close need it)."""
    from regtest.proxy import running_proxy

    proxy = running_proxy(datadir)
    target = proxy.target if proxy is not None else hub.target
    chain = [] if node is None else ["--bitcoind-rpc", node.url,
                                     "--bitcoind-cookie", str(node.cookie_file)]
    return [sys.executable, "-m", "client.cli", "--data-dir", str(datadir),
            "--hub", target, "--tls-cert", str(hub.tls_cert_file), *chain, *args]


def client_towers(datadir: Path) -> list[str]:
    """The towers (host:port) the client of `datadir` stored (`chanhub tower list`)."""
    from client.tower_config import load_towers

    return [t.target for t in load_towers(datadir)]


def chain_if_towers(datadir: Path, node: NodeEndpoint) -> NodeEndpoint | None:
    """`node` for a client that uses towers (every online command then needs the
    chain: the penalties pay its wallet), else None (the command needs no chain)."""
    return node if client_towers(datadir) else None


def run_chanhub(datadir: Path, hub: HubEndpoint, *args: str, timeout_s: float = 120.0,
                node: NodeEndpoint | None = None) -> str:
    """Run one `chanhub` command to completion; its stdout, or a `HarnessError`
    carrying its one-line error."""
    done = subprocess.run(chanhub_command(datadir, hub, *args, node=node), env=client_env(),
                          capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise HarnessError(f"chanhub {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def start_client(datadir: Path, hub: HubEndpoint, node: NodeEndpoint, *,
                 timeout_s: float = 60.0, via_proxy: bool = False,
                 tower: TowerEndpoint | None = None) -> ClientEndpoint:
    """Initialise the client of `datadir` for `hub` (once: `chanhub init` and a wallet
    address), then start `chanhub serve` detached, following `node`'s chain, and return
    once it says it is online. A restart (after `stop_client` or `kill_client`) serves
    the same store again. `via_proxy`: start a `regtest.proxy` link proxy in front of
    the hub for this client first (`cut_link` then drops its connection); a client
    started so keeps dialling its proxy on later starts. `tower`: the client registers
    with that watchtower (`chanhub init --tower`, or `chanhub tower add` for a client
    initialised before) and keeps using it on later starts."""
    from client.node import node_secret_of
    from protocol.driver.crypto import Passphrase
    from protocol.driver.db import sqlite_url

    if importlib.util.find_spec("client.cli") is None:
        raise HarnessError("the `chanhub` CLI (client/cli.py) is not in this tree")
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = running_client(datadir)
    if existing is not None:
        raise HarnessError(f"a client is already running in {datadir}")
    from regtest.proxy import PROXY_CONFIG_FILE, running_proxy, start_proxy

    proxied = via_proxy or (datadir / PROXY_CONFIG_FILE).exists()
    if proxied and running_proxy(datadir) is None:
        start_proxy(datadir, hub.target)
    marker = datadir / CLIENT_INIT_MARKER
    if not marker.exists():
        run_chanhub(datadir, hub, "init", *(tower.init_flags() if tower else ()))
        marker.write_text(hub.target)  # `init` ran once; a restart only serves
    elif tower is not None and tower.target not in client_towers(datadir):
        run_chanhub(datadir, hub, "tower", "add", tower.target, "--fingerprint",
                    tower.tls_cert_sha256)
    wallet_file = datadir / CLIENT_WALLET_FILE
    if not wallet_file.exists():
        shown = json.loads(run_chanhub(datadir, hub, "--json", "wallet", "address", node=node))
        wallet_file.write_text(str(shown["address"]))
    node_id = pubkey_from_secret(node_secret_of(
        sqlite_url(datadir / "client.sqlite"),
        Passphrase(CLIENT_PASSPHRASE, scrypt_n=CLIENT_SCRYPT_N)))
    command = chanhub_command(datadir, hub, "serve", node=node)
    target = command[command.index("--hub") + 1]
    process = _spawn_until_stderr_line(command, log_file=datadir / CLIENT_LOG_FILE,
                                       prefix=CLIENT_ONLINE_PREFIX, timeout_s=timeout_s)
    client = ClientEndpoint(datadir, process.pid, node_id, target, hub.tls_cert_file,
                            wallet_file.read_text())
    (datadir / CLIENT_STATE_FILE).write_text(json.dumps(
        {"pid": client.pid, "node_id": node_id.hex(), "hub_target": target,
         "tls_cert_file": str(hub.tls_cert_file), "wallet_address": client.wallet_address}))
    (datadir / CLIENT_PID_FILE).write_text(str(process.pid))
    return client


def _spawn_until_stderr_line(command: list[str], *, log_file: Path, prefix: bytes,
                             timeout_s: float) -> subprocess.Popen[bytes]:
    """Start `command` detached, its stdout and stderr appended to `log_file`, and
    return once a line starting with `prefix` appears there; the process exiting
    first, or the deadline: `HarnessError`. The output goes to the file, not through
    a pipe of ours, so everything the process writes later is kept (and nothing
    writes into a closed pipe once this command has exited). A file offers no
    readiness to wait on: it is polled every 50 ms, with the deadline as its bound."""
    import time

    offset = log_file.stat().st_size if log_file.exists() else 0
    with log_file.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True, env=client_env())
    deadline = time.monotonic() + timeout_s
    with log_file.open("rb") as reader:
        reader.seek(offset)
        pending = b""
        while True:
            exited = process.poll() is not None  # before reading: its last words count
            pending += reader.read()
            *lines, pending = pending.split(b"\n")
            if any(line.startswith(prefix) for line in lines):
                return process
            if exited:
                raise HarnessError(f"chanhub serve exited (code {process.returncode}); "
                                   f"last log lines:\n{file_tail(log_file)}")
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise HarnessError(f"chanhub serve was not online within {timeout_s:.0f} s")
            time.sleep(0.05)  # polling a real subprocess's log, bounded by the deadline


def running_client(datadir: Path) -> ClientEndpoint | None:
    try:
        data = json.loads((datadir / CLIENT_STATE_FILE).read_text())
        client = ClientEndpoint(datadir, int(data["pid"]), bytes.fromhex(data["node_id"]),
                                str(data["hub_target"]), Path(data["tls_cert_file"]),
                                data.get("wallet_address"))
    except (OSError, ValueError, KeyError):
        return None
    return client if _alive(client.pid) else None


def stop_client(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM `chanhub serve` of `datadir` (it finishes its writes). False if none ran.
    Its link proxy, if any, keeps running (`regtest.proxy.stop_proxy`)."""
    return stop_pid_file(datadir / CLIENT_PID_FILE, signal.SIGTERM, timeout_s)


def kill_client(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """kill -9 `chanhub serve` of `datadir`: nothing flushed. `start_client` on the same
    directory starts it again on its store."""
    return stop_pid_file(datadir / CLIENT_PID_FILE, signal.SIGKILL, timeout_s)


def pause_client(datadir: Path) -> ClientEndpoint:
    """SIGSTOP `chanhub serve` of `datadir`: it is frozen (its link stays open, nothing
    is answered) until `resume_client`. A client that stops responding, not one that
    went away."""
    return _signal_client(datadir, signal.SIGSTOP)


def resume_client(datadir: Path) -> ClientEndpoint:
    """SIGCONT a client frozen by `pause_client`."""
    return _signal_client(datadir, signal.SIGCONT)


def _signal_client(datadir: Path, signum: int, *, timeout_s: float = 10.0) -> ClientEndpoint:
    """Send SIGSTOP or SIGCONT and return once the kernel shows the process stopped or
    running (the signal is delivered asynchronously; a caller must be able to rely on
    the state)."""
    import time

    client = running_client(datadir)
    if client is None:
        raise HarnessError(f"no client is running in {datadir}")
    os.kill(client.pid, signum)
    want_stopped = signum == signal.SIGSTOP
    deadline = time.monotonic() + timeout_s
    while (client_state(client.pid) == "T") != want_stopped:
        if time.monotonic() > deadline:
            raise HarnessError(f"the client (pid {client.pid}) did not "
                               f"{'stop' if want_stopped else 'continue'}")
        time.sleep(0.01)  # polling the kernel's view of a real process, bounded
    return client


def client_state(pid: int) -> str:
    """The kernel's one-letter state of a process (R, S, T for stopped, Z...)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


# ---------------------------------------------------------------------------
# The watchtower: `chanhub-tower` (python -m hub.tower), one process on the node

TOWER_STATE_FILE = "tower.json"
TOWER_PID_FILE = "tower.pid"
TOWER_LOG_FILE = "tower.log"


@dataclass(frozen=True)
class TowerEndpoint:
    """A running `chanhub-tower`: where it listens and how a client pins it."""

    datadir: Path
    pid: int
    port: int
    tower_node_id: bytes
    tls_cert_sha256: str
    tls_cert_file: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def init_flags(self) -> list[str]:
        """The `chanhub init`/`serve` flags that register a client with this tower."""
        return ["--tower", self.target, "--tower-fingerprint", self.tls_cert_sha256]

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "port": self.port, "tower_node_id": self.tower_node_id.hex(),
                "tls_cert_sha256": self.tls_cert_sha256,
                "tls_cert_file": str(self.tls_cert_file)}

    @classmethod
    def from_json(cls, datadir: Path, data: dict[str, object]) -> TowerEndpoint:
        return cls(datadir, int(str(data["pid"])), int(str(data["port"])),
                   bytes.fromhex(str(data["tower_node_id"])), str(data["tls_cert_sha256"]),
                   Path(str(data["tls_cert_file"])))


def start_tower(datadir: Path, node: NodeEndpoint, *, poll_interval_s: float = 0.2,
                timeout_s: float = 60.0) -> TowerEndpoint:
    """Start `chanhub-tower` detached on an ephemeral loopback port, following `node`;
    return once it printed its start-up line. A restart on the same `datadir` keeps its
    key, certificate and appointments."""
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = running_tower(datadir)
    if existing is not None:
        raise HarnessError(f"a tower is already running on port {existing.port} "
                           f"(datadir {datadir})")
    command = [sys.executable, "-m", "hub.tower", "--data-dir", str(datadir),
               "--listen", "127.0.0.1:0", "--chain-rpc-url", node.url,
               "--chain-rpc-cookie-file", str(node.cookie_file),
               "--poll-interval", str(poll_interval_s)]
    process, line = spawn_announcing(command, log_file=datadir / TOWER_LOG_FILE,
                                     timeout_s=timeout_s, what="chanhub-tower")
    tower = TowerEndpoint.from_json(datadir, {**line, "pid": process.pid})
    (datadir / TOWER_STATE_FILE).write_text(json.dumps(tower.to_json()))
    (datadir / TOWER_PID_FILE).write_text(str(process.pid))
    return tower


def running_tower(datadir: Path) -> TowerEndpoint | None:
    try:
        tower = TowerEndpoint.from_json(datadir,
                                        json.loads((datadir / TOWER_STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return tower if _alive(tower.pid) else None


def stop_tower(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM the tower of `datadir` and wait for it. False if none ran."""
    return stop_pid_file(datadir / TOWER_PID_FILE, signal.SIGTERM, timeout_s)
