"""The trio <-> asyncio bridge on its own: results, errors and cancellation cross in
both directions; callbacks run in order; a raising callback never reaches trio."""

from __future__ import annotations

import asyncio

import pytest
import trio

from protocol.driver.grpc_bridge import BridgeClosed, GrpcBridge, open_grpc_bridge


class Boom(Exception):
    pass


async def test_calls_cross_both_ways_with_results_and_errors() -> None:
    async with open_grpc_bridge() as bridge:
        async def on_asyncio(x: int) -> int:
            await asyncio.sleep(0)
            return x * 2

        assert await bridge.run_in_asyncio(on_asyncio, 21) == 42

        async def fails() -> None:
            raise Boom()

        with pytest.raises(Boom):
            await bridge.run_in_asyncio(fails)

        async def on_trio(x: int) -> int:
            await trio.lowlevel.checkpoint()
            return x + 1

        async def from_asyncio() -> tuple[int, str]:
            value = await bridge.run_in_trio(on_trio, 1)
            try:
                await bridge.run_in_trio(fails)
            except Boom:
                return value, "boom"
            return value, "no error"

        assert await bridge.run_in_asyncio(from_asyncio) == (2, "boom")


async def test_cancellation_crosses_both_ways() -> None:
    async with open_grpc_bridge() as bridge:
        asyncio_cancelled = trio.Event()
        asyncio_started = trio.Event()

        async def hangs_on_asyncio() -> None:
            bridge.to_trio(asyncio_started.set)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                bridge.to_trio(asyncio_cancelled.set)
                raise

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run_in_asyncio, hangs_on_asyncio)
                await asyncio_started.wait()
                scope.cancel()
        await asyncio_cancelled.wait()

        trio_cancelled = trio.Event()
        started_on_asyncio: list[asyncio.Event] = []

        async def hangs_on_trio() -> None:
            bridge.to_asyncio(started_on_asyncio[0].set)
            try:
                await trio.sleep_forever()
            finally:
                trio_cancelled.set()

        async def asyncio_caller_gives_up() -> str:
            started_on_asyncio.append(asyncio.Event())
            task = asyncio.ensure_future(bridge.run_in_trio(hangs_on_trio))
            await started_on_asyncio[0].wait()
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"
            return "finished"

        assert await bridge.run_in_asyncio(asyncio_caller_gives_up) == "cancelled"
        await trio_cancelled.wait()


async def test_callbacks_keep_order_and_a_raising_one_is_contained() -> None:
    async with open_grpc_bridge() as bridge:
        seen: list[int] = []
        done = trio.Event()

        def boom() -> None:
            raise Boom()

        def push_all() -> None:  # runs on the asyncio thread
            for n in range(1000):
                bridge.to_trio(seen.append, n)
                if n == 500:
                    bridge.to_trio(boom)
            bridge.to_trio(done.set)

        bridge.to_asyncio(push_all)
        await done.wait()
        assert seen == list(range(1000))


async def test_a_closed_bridge_refuses_work() -> None:
    saved: list[GrpcBridge] = []
    async with open_grpc_bridge() as bridge:
        saved.append(bridge)

    async def anything() -> None:
        return None

    assert not saved[0].to_asyncio(print, "never")
    with pytest.raises(BridgeClosed):
        await saved[0].run_in_asyncio(anything)
