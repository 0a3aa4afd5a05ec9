"""`python -m regtest.node --datadir DIR [--port N] [--bind HOST] [--rpcuser U --rpcpassword P]
[--ready-fd FD]`

Runs the node and its JSON-RPC server in the foreground until SIGTERM, SIGINT
or the `stop` RPC; a clean shutdown deletes the cookie file and closes the
database. With `--ready-fd`, the line `ready <url>` is written to that inherited
file descriptor once the server listens, and the descriptor is closed: the
harness blocks on it instead of polling for the port.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from regtest.node import Node, RpcServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtest.node")
    parser.add_argument("--datadir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=18443)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--rpcuser")
    parser.add_argument("--rpcpassword")
    parser.add_argument("--ready-fd", type=int, help="write 'ready <url>' here when listening")
    args = parser.parse_args(argv)
    if bool(args.rpcuser) != bool(args.rpcpassword):
        parser.error("--rpcuser and --rpcpassword go together")
    auth = (args.rpcuser, args.rpcpassword) if args.rpcpassword else None
    node = Node(args.datadir)
    server = RpcServer(node, host=args.bind, port=args.port, auth=auth)
    server.start()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        node.stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"regtest node listening on {server.url} (datadir {args.datadir})", flush=True)
    if args.ready_fd is not None:
        with os.fdopen(args.ready_fd, "w") as ready:
            ready.write(f"ready {server.url}\n")
    while not node.stop_requested.wait(0.5):
        pass
    server.stop()
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
