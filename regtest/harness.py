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

The same class serves the `chanhub-regtest` CLI (detached: the node outlives the
command, its pid is kept in the datadir) and tests (attached: stopped with the
test). Later issues add the hub and clients here; this is the only code that
assembles several of our processes together.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from channel.chain import BitcoinRpc

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
    try:
        pid = int((datadir / PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not _alive(pid):
        (datadir / PID_FILE).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    if not _wait_for_exit(pid, timeout_s):
        os.kill(pid, signal.SIGKILL)
        _wait_for_exit(pid, timeout_s)
    (datadir / PID_FILE).unlink(missing_ok=True)
    return True


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
    try:
        return "\n".join((datadir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
