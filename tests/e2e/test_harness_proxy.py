"""The link proxy in one trio process on loopback sockets: bytes pass untouched both
ways, `cut` closes live connections, `refuse` closes new ones without dialling the
hub, `accept` forwards again, `cut-refuse` ends its refusal on time, errors name the
commands. The control socket is used as the harness uses it. (Its use between real
client and hub processes: tests/e2e/test_harness_faults.py and test_harness_cli.py.)

Time is trio's MockClock, frozen: real sockets block for real, so an eager autojump
clock would leap ahead while the kernel delivers bytes; the one timed command
(`cut-refuse`) is moved on by `jump`. The clock jumps by itself only after
`HANG_SECONDS` of real time with every task blocked, which lets `fail_after` turn a
hang into a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio
import trio.testing

from regtest.proxy import LinkProxy

HANG_SECONDS = 5.0


class Hub:
    """A stand-in upstream that echoes every byte and counts its connections."""

    def __init__(self) -> None:
        self.connections = 0

    async def echo(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                pass


async def _control(path: Path, command: str) -> dict[str, Any]:
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(command.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = await stream.receive_some(1024)
            assert chunk, "the control socket closed without an answer"
            answer += chunk
    result: dict[str, Any] = json.loads(answer)
    return result


async def _closed(stream: trio.SocketStream) -> bool:
    """True once the proxy closed `stream` (EOF or a reset)."""
    try:
        return await stream.receive_some(1024) == b""
    except trio.BrokenResourceError:
        return True


async def test_the_proxy_forwards_cuts_refuses_and_accepts(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = HANG_SECONDS
    hub = Hub()
    control = tmp_path / "proxy.sock"
    with trio.fail_after(60):
        await _walk(hub, control, mock_clock)


async def _walk(hub: Hub, control: Path, mock_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        [hub_listener] = await nursery.start(
            lambda task_status: trio.serve_tcp(hub.echo, 0, host="127.0.0.1",
                                               task_status=task_status))
        hub_port = hub_listener.socket.getsockname()[1]
        proxy = LinkProxy("127.0.0.1", hub_port)
        port = await nursery.start(proxy.run, 0, control)

        # bytes both ways, untouched (TLS would be bytes like these)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        payload = os.urandom(200_000)
        await client.send_all(payload)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += await client.receive_some(65536)
        assert echoed == payload
        assert await _control(control, "status") == {
            "accepted": 1, "forwarded": 1, "refused": 0, "open": 1, "cuts": 0,
            "refusing": False}

        # cut: the live connection closes; a new one is forwarded again
        assert (await _control(control, "cut"))["cuts"] == 1
        assert await _closed(client)
        await trio.testing.wait_all_tasks_blocked()
        assert (await _control(control, "status"))["open"] == 0
        again = await trio.open_tcp_stream("127.0.0.1", port)
        await again.send_all(b"ping")
        assert await again.receive_some(4) == b"ping"

        # refuse: a new connection closes at once and the hub is not dialled; the live
        # one stays until cut
        assert (await _control(control, "refuse"))["refusing"] is True
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _closed(refused)
        assert hub.connections == 2
        await again.send_all(b"still")
        assert await again.receive_some(5) == b"still"
        await _control(control, "cut")
        assert await _closed(again)
        assert (await _control(control, "accept"))["refusing"] is False
        status = await _control(control, "status")
        assert (status["accepted"], status["forwarded"], status["refused"]) == (3, 2, 1)

        # cut-refuse: refusing for exactly the seconds given
        assert (await _control(control, "cut-refuse 5"))["refusing"] is True
        mock_clock.jump(4.9)
        await trio.testing.wait_all_tasks_blocked()
        assert (await _control(control, "status"))["refusing"] is True
        mock_clock.jump(0.2)
        await trio.testing.wait_all_tasks_blocked()
        assert (await _control(control, "status"))["refusing"] is False

        assert "unknown command 'drop'" in (await _control(control, "drop"))["error"]
        nursery.cancel_scope.cancel()


async def test_a_connection_closes_when_the_hub_is_down(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = HANG_SECONDS
    with trio.fail_after(60):
        await _dead_hub(tmp_path)


async def _dead_hub(tmp_path: Path) -> None:
    with trio.socket.socket() as probe:  # a port nothing listens on
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    proxy = LinkProxy("127.0.0.1", dead_port)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.run, 0, tmp_path / "proxy.sock")
        client = await trio.open_tcp_stream("127.0.0.1", port)
        assert await _closed(client)
        assert proxy.status()["forwarded"] == 0 and proxy.status()["accepted"] == 1
        nursery.cancel_scope.cancel()
