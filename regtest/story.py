"""Client actors: each client of the demo and of the end-to-end tests is its own OS
process running the SDK, driven from the parent over its stdin/stdout.

Theory of operation
-------------------
An actor is what an application embedding the SDK is: `python -m regtest.story
--data-dir DIR --hub HOST:PORT --tls-cert FILE --bitcoind-rpc URL --bitcoind-cookie
FILE` (the passphrase in `CHANHUB_PASSPHRASE`, as for the `chanhub` CLI) opens the
client's own store (it holds it, as `chanhub serve` does), records the hub's terms
on first start (`chanhub init`'s job), follows its own chain, connects to the hub
over pinned TLS, and prints one JSON line saying who it is. Then it reads one JSON
command per line on stdin (`{"op": "pay", "args": {...}}`) and answers each with
one JSON line on stdout: `{"ok": result}` or `{"error": {"type": "PayeeOffline",
"message": "..."}}` where `type` is the SDK's exception class (`client.errors`).
Commands are answered in order, one at a time; `pay_many` runs its payments
concurrently inside the actor. EOF on stdin (or `stop`) closes the client cleanly
(the session drains) and exits 0.

Why not the `chanhub` CLI: every `chanhub` command is a process that imports the
stack, derives the store key and authenticates before doing one thing, ~2.5 s each
here (measured), so a story of 100 invoices and 100 payments would take minutes; and
while `chanhub serve` holds a client's store, no one-shot command may open it. The
actor is the same SDK calls in one long-lived process per client.

`ClientActor` is the parent's side (trio): `async with open_actor(...) as alice:
await alice.call("wallet_address")`. A refused command raises the same
`client.errors` class the SDK raised in the actor, with its message, so a caller can
`pytest.raises(errors.PayeeOffline)` across the process boundary. Every call has a
deadline (real time: these are real processes); a dead actor is an `ActorDied` with
the tail of its log.

`clock_offset_s`: the actor's client clock (invoice creation and expiry checks) is
the wall clock plus an offset the parent can move (`advance_clock`), so a test makes
an invoice expire without waiting for it.

`hold` (TEST-ONLY): while on, the actor records each payment it receives as a client
does (the receipt is durable, the invoice paid) but does not fulfill the HTLC: the
preimage goes to the channel's watch only, so a force close then claims the HTLC on
chain with it (BOLT #5 HTLC-success), the scenario "a payee reveals the preimage on
chain". `wait_held` returns once an HTLC is held. A client fulfills at once by design;
this switch exists for the harness, in the actor, not as a client option.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import trio

from channel.chain.rpc import BitcoinRpc
from channel.commitment import Side
from client import errors
from client.node import ClientNode, node_secret_of, save_hub_terms
from client.sdk import AsyncHubClient, GrpcLinks, open_grpc_client, terms_of
from client.transport import HubPin
from protocol import ChannelState
from protocol.driver.crypto import Passphrase
from protocol.driver.db import sqlite_url
from protocol.driver.driver import ChannelDriver
from protocol.driver.grpc_bridge import open_grpc_bridge

ACTOR_LOG_FILE = "actor.log"
PASSPHRASE_ENV = "CHANHUB_PASSPHRASE"
DEFAULT_CALL_TIMEOUT_S = 120.0
SYNC_POLL_S = 0.05  # how often an actor looks at its own follower's tip while syncing


class ActorDied(Exception):
    """The actor process exited, or did not answer within the deadline."""


class ActorRefused(Exception):
    """The actor refused a command with an error that is not one of the SDK's."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type, self.message = error_type, message


# ---------------------------------------------------------------------------
# The parent's side


@dataclass(frozen=True)
class ActorIdentity:
    """What an actor says about itself once it is online."""

    name: str
    node_id: bytes
    hub_node_id: bytes
    base_fee_msat: int
    fee_ppm: int
    height: int


class ClientActor:
    """One running actor process (see the module docstring)."""

    def __init__(self, name: str, process: trio.Process, log_file: Path,
                 identity: ActorIdentity, reader: _LineReader) -> None:
        self.name, self.process, self.log_file = name, process, log_file
        self.identity, self._reader = identity, reader

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    async def call(self, op: str, timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                   **args: Any) -> Any:
        """Run one command in the actor; its result, or the SDK's error re-raised."""
        assert self.process.stdin is not None
        request = json.dumps({"op": op, "args": args}).encode() + b"\n"
        try:
            with trio.fail_after(timeout_s):
                await self.process.stdin.send_all(request)
                line = await self._reader.readline()
        except trio.TooSlowError:
            raise ActorDied(f"{self.name}: no answer to {op} within {timeout_s:.0f} s; "
                            f"last log lines:\n{log_tail(self.log_file)}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            line = b""
        if not line:
            raise ActorDied(f"{self.name} exited during {op} (code "
                            f"{await exit_code(self.process)}); "
                            f"last log lines:\n{log_tail(self.log_file)}")
        answer = json.loads(line)
        if "error" in answer:
            raise sdk_error(answer["error"]["type"], answer["error"]["message"])
        return answer["ok"]

    async def stop(self, timeout_s: float = 30.0) -> int:
        """Close stdin (the actor drains and exits); SIGKILL after `timeout_s`."""
        assert self.process.stdin is not None
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.process.stdin.aclose()
        with trio.move_on_after(timeout_s):
            return await self.process.wait()
        self.process.kill()
        return await self.process.wait()


async def exit_code(process: trio.Process, timeout_s: float = 10.0) -> int | None:
    """The exit status of a process whose stdout just ended (it closes stdout a moment
    before it is reaped); None if it is still running after `timeout_s`."""
    with trio.move_on_after(timeout_s):
        return await process.wait()
    return None


def find_exception(exc: BaseException, types: tuple[type[Exception], ...]
                   ) -> Exception | None:
    """The first exception of `types` in `exc`, which trio's nurseries may have wrapped
    in exception groups; None if there is none."""
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, types)
            if found is not None:
                return found
    return None


def sdk_error(error_type: str, message: str) -> Exception:
    """The `client.errors` exception named `error_type` (an `ActorRefused` otherwise)."""
    cls = getattr(errors, error_type, None)
    if isinstance(cls, type) and issubclass(cls, errors.ChanhubError):
        return cls(message)
    return ActorRefused(error_type, message)


class _LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer = stream, bytearray()

    async def readline(self) -> bytes:
        """One line without its newline; b"" at EOF."""
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(1 << 16)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line


def actor_command(datadir: Path, *, hub_target: str, tls_cert_file: Path, rpc_url: str,
                  cookie_file: Path, scrypt_n: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "regtest.story", "--data-dir", str(datadir),
               "--hub", hub_target, "--tls-cert", str(tls_cert_file),
               "--bitcoind-rpc", rpc_url, "--bitcoind-cookie", str(cookie_file)]
    if scrypt_n is not None:
        command += ["--scrypt-n", str(scrypt_n)]
    return command


@contextlib.asynccontextmanager
async def open_actor(name: str, datadir: Path, *, hub_target: str, tls_cert_file: Path,
                     rpc_url: str, cookie_file: Path, passphrase: str,
                     scrypt_n: int | None = None, timeout_s: float = 60.0
                     ) -> AsyncIterator[ClientActor]:
    """Start the actor of `datadir` and yield it once online; stop it on exit."""
    actor = await start_actor(name, datadir, hub_target=hub_target,
                              tls_cert_file=tls_cert_file, rpc_url=rpc_url,
                              cookie_file=cookie_file, passphrase=passphrase,
                              scrypt_n=scrypt_n, timeout_s=timeout_s)
    try:
        yield actor
    finally:
        with trio.CancelScope(shield=True):
            await actor.stop()


async def start_actor(name: str, datadir: Path, *, hub_target: str, tls_cert_file: Path,
                      rpc_url: str, cookie_file: Path, passphrase: str,
                      scrypt_n: int | None = None, timeout_s: float = 60.0) -> ClientActor:
    """Start the actor of `datadir` (created on first start) and return once online.
    The caller stops it (`ClientActor.stop`)."""
    datadir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = datadir / ACTOR_LOG_FILE
    with log_file.open("ab") as log:
        process = await trio.lowlevel.open_process(
            actor_command(datadir, hub_target=hub_target, tls_cert_file=tls_cert_file,
                          rpc_url=rpc_url, cookie_file=cookie_file, scrypt_n=scrypt_n),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            env={**os.environ, PASSPHRASE_ENV: passphrase}, start_new_session=True)
    assert process.stdout is not None
    reader = _LineReader(process.stdout)
    line = None
    with trio.move_on_after(timeout_s):
        line = await reader.readline()
    try:
        if not line:
            raise ValueError("no start-up line")
        hello = json.loads(line)
        identity = ActorIdentity(name, bytes.fromhex(hello["node_id"]),
                                 bytes.fromhex(hello["hub_node_id"]),
                                 int(hello["base_fee_msat"]), int(hello["fee_ppm"]),
                                 int(hello["height"]))
    except (ValueError, KeyError, TypeError):
        # EOF on stdout (b"") is the actor exiting; no line at all (None) is a hang.
        why = (f"exited during start-up (code {await exit_code(process)})" if line == b""
               else f"did not come online within {timeout_s:.0f} s")
        process.kill()
        await process.wait()
        raise ActorDied(f"{name} {why}; last log lines:\n{log_tail(log_file)}") from None
    return ClientActor(name, process, log_file, identity, reader)


@contextlib.asynccontextmanager
async def open_actors(datadirs: dict[str, Path], *, hub_target: str, tls_cert_file: Path,
                      rpc_url: str, cookie_file: Path, passphrase: str,
                      scrypt_n: int | None = None, timeout_s: float = 60.0
                      ) -> AsyncIterator[dict[str, ClientActor]]:
    """Start one actor per name (concurrently: each start is mostly imports and key
    derivation) and yield them by name; every one started is stopped on exit."""
    actors: dict[str, ClientActor] = {}
    try:
        async with trio.open_nursery() as nursery:
            async def start(name: str, datadir: Path) -> None:
                actors[name] = await start_actor(
                    name, datadir, hub_target=hub_target, tls_cert_file=tls_cert_file,
                    rpc_url=rpc_url, cookie_file=cookie_file, passphrase=passphrase,
                    scrypt_n=scrypt_n, timeout_s=timeout_s)

            for name, datadir in datadirs.items():
                nursery.start_soon(start, name, datadir)
        yield {name: actors[name] for name in datadirs}
    finally:
        with trio.CancelScope(shield=True):
            for actor in actors.values():
                await actor.stop()


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# The actor's side: one SDK client, commands from stdin


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class Actor:
    """The commands an actor answers: `commands` names each one (no dispatch by
    attribute name: the table is the protocol); each takes the command's args."""

    def __init__(self, client: AsyncHubClient, clock_offset_s: list[int]) -> None:
        self.client = client
        self.clock_offset_s = clock_offset_s
        self.holding = False
        self.held: list[dict[str, Any]] = []
        self._held_changed = trio.Event()
        node = client.node
        fulfill = node._answer  # the node's one place that fulfills a received HTLC

        def answer(driver: ChannelDriver, htlc_id: int, preimage: bytes) -> None:
            if not self.holding:
                fulfill(driver, htlc_id, preimage)
                return
            node._preimage_to_watch(driver, preimage)  # the watch claims it on chain
            self.held.append({"channel_id": driver.channel_id, "htlc_id": htlc_id,
                              "payment_hash": hashlib.sha256(preimage).digest()})
            self._held_changed.set()
            self._held_changed = trio.Event()

        setattr(node, "_answer", answer)  # noqa: B010 (TEST-ONLY: the hold switch)
        self.commands: dict[str, Callable[..., Awaitable[Any]]] = {
            "info": self.op_info, "wallet_address": self.op_wallet_address,
            "wallet_balance": self.op_wallet_balance, "sync": self.op_sync,
            "open": self.op_open, "wait_open": self.op_wait_open,
            "request_inbound": self.op_request_inbound, "channels": self.op_channels,
            "ready": self.op_ready, "balance": self.op_balance,
            "invoices": self.op_invoices, "pay": self.op_pay, "pay_many": self.op_pay_many,
            "refund": self.op_refund, "payments": self.op_payments,
            "events": self.op_events, "close": self.op_close,
            "advance_clock": self.op_advance_clock, "hold": self.op_hold,
            "wait_held": self.op_wait_held,
        }

    async def op_info(self) -> dict[str, Any]:
        node = self.client.node
        return {"node_id": node.node_id, "hub_node_id": node.terms.hub_node_id,
                "base_fee_msat": node.terms.base_fee_msat, "fee_ppm": node.terms.fee_ppm,
                "height": node.height()}

    async def op_wallet_address(self) -> str:
        return await self.client.wallet_address()

    async def op_wallet_balance(self) -> Any:
        return await self.client.wallet_balance()

    async def op_sync(self, height: int) -> int:
        """Wait until our own chain follower has seen `height` (the parent mined)."""
        node = self.client.node
        while node.height() < height:
            await trio.sleep(SYNC_POLL_S)
        return node.height()

    async def op_open(self, amount_sat: int, push_msat: int = 0) -> dict[str, Any]:
        """Open a channel funded from the wallet; return once its funding tx is out."""
        channel_id = await self.client.open_channel(amount_sat, push_msat=push_msat,
                                                    wait=False)
        return self._channel(channel_id)

    async def op_wait_open(self, channel_id: str) -> dict[str, Any]:
        """Wait until the channel is open (minimum depth seen by both sides) and up."""
        node = self.client.node
        while True:
            driver = self._driver(channel_id)
            if driver.channel.state is ChannelState.NORMAL:
                break
            await node.changed.wait()
        await self.client.ready()
        return self._channel(driver.channel_id)

    def _driver(self, channel_id: str) -> Any:
        for driver in self.client.node.session.drivers:
            if driver.channel_id.hex() == channel_id:
                return driver
        raise errors.NoChannel(f"no channel {channel_id}")

    def _channel(self, channel_id: bytes) -> dict[str, Any]:
        driver = self._driver(channel_id.hex())
        d = driver.channel.d
        view = driver.channel.latest_view(Side.LOCAL)
        static = driver.channel.static if d.remote is not None else None
        return {"channel_id": driver.channel_id, "state": driver.channel.state.value,
                "funding_txid": d.funding_txid[::-1], "funding_vout": d.funding_output_index,
                "funding_sat": d.funding_sat, "feerate_per_kw": d.book.base_feerate_per_kw,
                "local_msat": int(view.local_msat), "remote_msat": int(view.remote_msat),
                # what our to_local waits after we force-close (the hub's demand of us)
                "to_self_delay_blocks": static.remote.to_self_delay if static else 0,
                # in flight now, on our latest commitment (a test reads their expiries)
                "htlcs": [{"htlc_id": h.htlc_id, "offered": h.offered_by is Side.LOCAL,
                           "amount_msat": h.amount_msat, "cltv_expiry": h.cltv_expiry}
                          for h in view.htlcs]}

    async def op_request_inbound(self, amount_sat: int, idempotency_key: str) -> Any:
        """Ask the hub for a channel it funds toward us; return once it is open here
        (the parent mines its funding tx meanwhile)."""
        await self.client.ready()
        return await self.client.request_inbound(amount_sat, idempotency_key=idempotency_key)

    async def op_channels(self) -> list[dict[str, Any]]:
        return [self._channel(d.channel_id) for d in self.client.node.session.drivers
                if d.channel.d.funding_txid]

    async def op_ready(self) -> None:
        await self.client.ready()

    async def op_balance(self) -> Any:
        return await self.client.get_balance()

    async def op_invoices(self, count: int, amount_msat: int, description: str = "",
                          expiry_seconds: int = 3600) -> list[str]:
        return [await self.client.add_invoice(amount_msat, f"{description} {i + 1}".strip(),
                                              expiry_seconds) for i in range(count)]

    async def op_pay(self, invoice: str, idempotency_key: str, wait: bool = True) -> Any:
        """Pay; without ``wait``, answer once the payment is recorded (in flight), so
        the actor takes other commands meanwhile (``payments`` shows how it ends)."""
        await self.client.ready()
        return await self.client.pay(idempotency_key=idempotency_key, invoice=invoice,
                                     wait=wait)

    async def op_pay_many(self, invoices: list[str], key_prefix: str,
                          in_flight: int = 10) -> dict[str, Any]:
        """Pay every invoice (at most `in_flight` at once). Returns the payments (or
        each one's error) in invoice order and the seconds it took."""
        await self.client.ready()
        results: list[Any] = [None] * len(invoices)
        limiter = trio.CapacityLimiter(in_flight)
        started = time.monotonic()

        async def pay(index: int) -> None:
            async with limiter:
                try:
                    results[index] = await self.client.pay(
                        idempotency_key=f"{key_prefix}-{index + 1}", invoice=invoices[index])
                except errors.ChanhubError as exc:
                    results[index] = {"error": {"type": type(exc).__name__,
                                                "message": str(exc)}}

        async with trio.open_nursery() as nursery:
            for index in range(len(invoices)):
                nursery.start_soon(pay, index)
        return {"payments": results, "seconds": time.monotonic() - started}

    async def op_refund(self, payment_id: str, amount_msat: int, payer_node_id: str,
                        idempotency_key: str) -> Any:
        await self.client.ready()
        return await self.client.refund(payment_id, amount_msat,
                                        idempotency_key=idempotency_key,
                                        payer_node_id=bytes.fromhex(payer_node_id))

    async def op_payments(self) -> Any:
        return await self.client.list_payments()

    async def op_events(self, after: int = 0) -> Any:
        return await self.client.node.events_after(after)

    async def op_close(self, channel_id: str, force: bool = False) -> dict[str, Any]:
        """Close one channel: cooperatively (return once the closing tx is agreed and
        broadcast), or force (our latest commitment broadcast)."""
        await self.client.ready()
        await self.client.close_channel(channel_id=bytes.fromhex(channel_id), force=force)
        driver = self._driver(channel_id)
        while driver.channel.state in (ChannelState.SHUTDOWN, ChannelState.NEGOTIATING):
            await self.client.node.changed.wait()
        return self._channel(driver.channel_id)

    async def op_hold(self, on: bool) -> bool:
        """Hold received HTLCs (see the module docstring) while ``on``."""
        self.holding = on
        return on

    async def op_wait_held(self, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` HTLCs are held; the held HTLCs."""
        while len(self.held) < count:
            await self._held_changed.wait()
        return self.held

    async def op_advance_clock(self, seconds: int) -> int:
        self.clock_offset_s[0] += seconds
        return self.clock_offset_s[0]


async def _serve_commands(actor: Actor) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    reader = _LineReader(stdin)
    while line := await reader.readline():
        request = json.loads(line)
        if request["op"] == "stop":
            break
        handler = actor.commands.get(request["op"])
        answer: dict[str, Any]
        if handler is None:
            answer = {"error": {"type": "UnknownCommand", "message": request["op"]}}
        else:
            try:
                answer = {"ok": _jsonable(await handler(**request.get("args", {})))}
            except errors.ChanhubError as exc:
                answer = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


async def _actor_main(args: argparse.Namespace) -> None:
    key_source = Passphrase(os.environ[PASSPHRASE_ENV], scrypt_n=args.scrypt_n)
    store_url = sqlite_url(args.data_dir / "client.sqlite")
    pin = HubPin.from_cert_file(args.tls_cert)
    terms_file = args.data_dir / "hub-terms-recorded"
    if not terms_file.exists():  # what `chanhub init` does, once
        secret = node_secret_of(store_url, key_source)
        async with open_grpc_bridge() as bridge:
            info = await GrpcLinks(bridge, args.hub, node_secret=secret, pin=pin).hub_info()
        save_hub_terms(store_url, terms_of(info))
        terms_file.write_text(args.hub)
    clock_offset_s = [0]

    def clock() -> int:
        return int(time.time()) + clock_offset_s[0]

    rpc = BitcoinRpc(args.bitcoind_rpc, cookie_file=args.bitcoind_cookie)
    async with rpc, open_grpc_client(
            lambda: ClientNode.open(store_url, key_source, None, clock=clock),
            args.hub, pin, chain_rpc=rpc) as client:
        actor = Actor(client, clock_offset_s)
        sys.stdout.write(json.dumps(_jsonable(await actor.op_info())) + "\n")
        sys.stdout.flush()
        await _serve_commands(actor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regtest.story", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--bitcoind-rpc", required=True)
    parser.add_argument("--bitcoind-cookie", type=Path, required=True)
    parser.add_argument("--scrypt-n", type=int, default=2**15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        trio.run(_actor_main, args)
    except Exception as exc:
        error = find_exception(exc, (errors.ChanhubError,))
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)  # one line, as the CLI
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
