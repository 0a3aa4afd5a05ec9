"""A loopback TCP proxy between one client and the hub, which the harness can tell to
cut the link (`python -m regtest.proxy`, one process per proxied client).

Theory of operation
-------------------
The client dials the proxy instead of the hub; for each connection accepted, the
proxy dials the hub and copies bytes both ways until either side closes. It never
looks at the bytes: TLS and gRPC pass through untouched, so the client still pins the
hub's certificate and authenticates to the hub itself.

A control socket (a Unix socket in the client's data directory) takes one command
line per connection and answers one JSON line (the proxy's status):

- `cut`: close every current connection now, both ways (a link lost mid-payment);
- `refuse`: from now on, close each new connection as soon as it is accepted (the
  hub looks unreachable; the client's reconnect attempts fail);
- `accept`: forward new connections again;
- `cut-refuse SECONDS`: `cut`, then refuse for SECONDS of real time, then accept
  (the tester's "drop it for a while"; tests use `refuse`/`accept` explicitly);
- `status`: only the answer.

The status counts connections accepted, forwarded and refused, so a test can see a
client reconnect after a cut without sleeping: it polls the proxy with a bound.

The proxy announces itself like chanhubd: one JSON line on stdout once it listens
(`{"port": ..., "control": ...}`); `start_proxy` waits for that line. Its pid and
that line are kept in the client's data directory (`proxy.json`), so `cut_link`
works from any shell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

PROXY_STATE_FILE = "proxy.json"
PROXY_PID_FILE = "proxy.pid"
PROXY_LOG_FILE = "proxy.log"
PROXY_CONTROL_SOCKET = "proxy.sock"
# Written when a proxy is first started for a client: later starts of that client
# (after a kill) come back through a proxy again, so its tester's cuts keep working.
PROXY_CONFIG_FILE = "proxy.upstream"
BUFFER_BYTES = 65536


class LinkProxy:
    """The proxy's state and its three tasks (listener, control, connections)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.refusing = False
        self.accepted = self.forwarded = self.refused = self.cuts = 0
        # One cancel scope per live connection: `cut` cancels them all.
        self._live: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None

    def status(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "forwarded": self.forwarded,
                "refused": self.refused, "open": len(self._live), "cuts": self.cuts,
                "refusing": self.refusing}

    def cut(self) -> None:
        self.cuts += 1
        for scope in list(self._live):
            scope.cancel()

    async def handle_client(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        if self.refusing:
            self.refused += 1
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._live.add(scope)
            try:
                try:
                    upstream = await trio.open_tcp_stream(self.upstream_host,
                                                          self.upstream_port)
                except OSError:
                    return  # the hub is down: the client sees its connection close
                self.forwarded += 1
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            finally:
                self._live.discard(scope)
        # Closed abruptly either way: a cut must look like a lost link (RST), not a
        # polite goodbye.
        with contextlib.suppress(OSError):
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
        await client.aclose()

    async def control(self, command: str) -> dict[str, Any]:
        words = command.split()
        if words == ["cut"]:
            self.cut()
        elif words == ["refuse"]:
            self.refusing = True
        elif words == ["accept"]:
            self.refusing = False
        elif len(words) == 2 and words[0] == "cut-refuse":
            seconds = float(words[1])
            self.refusing = True
            self.cut()
            assert self._nursery is not None
            self._nursery.start_soon(self._accept_after, seconds)
        elif words != ["status"]:
            return {"error": f"unknown command {command!r} (cut, refuse, accept, "
                             "cut-refuse SECONDS, status)"}
        return self.status()

    async def _accept_after(self, seconds: float) -> None:
        await trio.sleep(seconds)  # real time: this runs in the proxy process, not a test
        self.refusing = False

    async def serve_control(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(1024)
                if not chunk:
                    break
                data += chunk
            answer = await self.control(data.decode(errors="replace").strip())
            await stream.send_all(json.dumps(answer).encode() + b"\n")

    async def run(self, listen_port: int, control_path: Path, *,
                  task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1:`listen_port` (0: ephemeral) and on the control socket;
        `task_status.started(port)` once both listen."""
        listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1")
        control_path.unlink(missing_ok=True)
        control_socket = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await control_socket.bind(str(control_path))
        control_socket.listen()
        control_path.chmod(0o600)
        port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self.handle_client, listeners)
            nursery.start_soon(trio.serve_listeners, self.serve_control,
                               [trio.SocketListener(control_socket)])
            task_status.started(port)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream,
                done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(BUFFER_BYTES):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    done.cancel()  # one side closed: the connection is over, both ways


# ---------------------------------------------------------------------------
# The harness side: start, find, command and stop a client's proxy process.


@dataclass(frozen=True)
class ProxyEndpoint:
    datadir: Path
    pid: int
    port: int
    control: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_proxy(datadir: Path, upstream: str, *, timeout_s: float = 30.0) -> ProxyEndpoint:
    """Start the link proxy of the client of `datadir` (toward `upstream`, host:port),
    on an ephemeral loopback port the first time, on the same port after."""
    from regtest.harness import HarnessError, spawn_announcing

    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if running_proxy(datadir) is not None:
        raise HarnessError(f"a link proxy is already running in {datadir}")
    port = 0
    with contextlib.suppress(OSError, ValueError, KeyError):
        port = int(json.loads((datadir / PROXY_STATE_FILE).read_text())["port"])
    command = [sys.executable, "-m", "regtest.proxy", "--listen-port", str(port),
               "--upstream", upstream, "--control", str(datadir / PROXY_CONTROL_SOCKET)]
    process, line = spawn_announcing(command, log_file=datadir / PROXY_LOG_FILE,
                                     timeout_s=timeout_s, what="the link proxy")
    proxy = ProxyEndpoint(datadir, process.pid, int(str(line["port"])),
                          Path(str(line["control"])))
    (datadir / PROXY_CONFIG_FILE).write_text(upstream)
    (datadir / PROXY_STATE_FILE).write_text(json.dumps(
        {"pid": proxy.pid, "port": proxy.port, "control": str(proxy.control)}))
    (datadir / PROXY_PID_FILE).write_text(str(proxy.pid))
    return proxy


def running_proxy(datadir: Path) -> ProxyEndpoint | None:
    from regtest.harness import _alive

    try:
        data = json.loads((datadir / PROXY_STATE_FILE).read_text())
        proxy = ProxyEndpoint(datadir, int(data["pid"]), int(data["port"]),
                              Path(data["control"]))
    except (OSError, ValueError, KeyError):
        return None
    return proxy if _alive(proxy.pid) else None


def stop_proxy(datadir: Path, *, timeout_s: float = 30.0) -> bool:
    from regtest.harness import stop_pid_file

    return stop_pid_file(datadir / PROXY_PID_FILE, signal.SIGTERM, timeout_s)


def proxy_command(datadir: Path, command: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one control command to the proxy of `datadir`; its status after it."""
    from regtest.harness import HarnessError

    proxy = running_proxy(datadir)
    if proxy is None:
        raise HarnessError(f"no link proxy is running in {datadir} (start the client "
                           "with via_proxy / `chanhub-regtest up --proxy`)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(str(proxy.control))
        conn.sendall(command.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(1024)
            if not chunk:
                break
            answer += chunk
    status: dict[str, Any] = json.loads(answer)
    if "error" in status:
        raise HarnessError(str(status["error"]))
    return status


def cut_link(datadir: Path, *, refuse_s: float | None = None) -> dict[str, Any]:
    """Drop the client's current connections to the hub; with `refuse_s`, also refuse
    new ones for that many (real) seconds."""
    return proxy_command(datadir, "cut" if refuse_s is None else f"cut-refuse {refuse_s}")


def refuse_links(datadir: Path) -> dict[str, Any]:
    """Refuse the client's new connections until `accept_links`."""
    return proxy_command(datadir, "refuse")


def accept_links(datadir: Path) -> dict[str, Any]:
    return proxy_command(datadir, "accept")


def proxy_status(datadir: Path) -> dict[str, Any]:
    return proxy_command(datadir, "status")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m regtest.proxy", description=__doc__)
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="host:port of the hub")
    parser.add_argument("--control", type=Path, required=True, help="control socket path")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    proxy = LinkProxy(host or "127.0.0.1", int(port))

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            listening = await nursery.start(proxy.run, args.listen_port, args.control)
            # the start-up line start_proxy waits for
            print(json.dumps({"port": listening, "control": str(args.control)}), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: a clean exit
    main()
