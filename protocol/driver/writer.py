"""Group commit: one writer thread, one transaction (one fsync) for many writes.

Theory of operation
-------------------
Every durable write of a process (channel snapshots and watches, and the hub's or
the client's own rows: payments, invoices, events, wallet state) is a function of a
SQLAlchemy ``Connection`` handed to ``GroupWriter``. ``submit(fn)`` queues it and
returns a ``PendingWrite`` at once; ``await write(fn)`` (= ``await submit(fn).wait()``)
returns only after the transaction holding ``fn`` has **committed**, with ``fn``'s
return value.

``run()`` (a service: start it with ``nursery.start``) loops: wait until something is
queued, take *everything* queued (up to ``max_batch``), and in one call to
``trio.to_thread.run_sync`` execute the functions in submission order inside one
transaction and commit. While that commit's fsync runs, new submissions pile up and
form the next batch: the busier the process, the more writes each fsync covers.

Failure, all or nothing:

- ``fn`` raises: the transaction is rolled back and the batch re-run without it, so
  only its caller gets the exception (``write`` re-raises it as is) and the rest of
  the batch commits. A refused write (a stale snapshot) cannot sink its neighbours.
  (So a function may run more than once; only the committed run counts: a write
  function must touch nothing but its connection.)
- the COMMIT (or BEGIN) fails (disk full, a deferred constraint, connection lost):
  nothing of the batch is stored, and every caller of that batch gets
  ``CommitFailed`` (the cause chained). Nothing half-done is ever reported as durable.

Writes from one trio task made without an ``await`` in between land in the same
batch, in order; a batch is committed only after the previous one returned, so the
order of commits is the order of submissions.

Cancelling a caller of ``write`` does not cancel its write (a thread cannot be
interrupted mid-commit): the write may still commit. Cancelling ``run`` waits for the
batch in flight to finish (``abandon_on_cancel=False``), so SIGTERM loses nothing that
was being committed; writes still queued then fail with ``WriterClosed``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio
from sqlalchemy import Connection, Engine

T = TypeVar("T")
WriteFn = Callable[[Connection], Any]


class WriteError(Exception):
    """Base class of the writer's errors."""


class CommitFailed(WriteError):
    """The transaction holding this write did not commit; nothing of it is stored."""


class WriterClosed(WriteError):
    """The writer stopped (or never started) before this write was committed."""


class PendingWrite(Generic[T]):
    """One queued write; ``await wait()`` for its commit."""

    __slots__ = ("_done", "_error", "_result", "fn")

    def __init__(self, fn: Callable[[Connection], T]) -> None:
        self.fn = fn
        self._done = trio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _resolve(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.set()


@dataclass
class WriterStats:
    commits: int = 0
    writes: int = 0
    failed_commits: int = 0
    commit_seconds: float = 0.0  # wall time spent in BEGIN..COMMIT (writer thread)

    @property
    def writes_per_commit(self) -> float:
        return self.writes / self.commits if self.commits else 0.0


class GroupWriter:
    """The one writer of a store. See the module docstring."""

    def __init__(self, engine: Engine, *, max_batch: int = 2_000) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.stats = WriterStats()
        self._queue: list[PendingWrite[Any]] = []
        self._wakeup = trio.Event()
        self._running = False
        self._closed = False
        # Test seam for crash tests: called in the writer thread after the batch's
        # functions ran and before COMMIT (a kill -9 there loses the whole batch).
        self.before_commit: Callable[[int], None] | None = None
        self._conn: Connection | None = None

    def submit(self, fn: Callable[[Connection], T]) -> PendingWrite[T]:
        """Queue ``fn``; never blocks. Await the result's ``wait()`` for the commit."""
        if self._closed:
            raise WriterClosed("the writer is stopped")
        pending = PendingWrite(fn)
        self._queue.append(pending)
        self._wakeup.set()
        return pending

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Queue ``fn`` and return its result once its transaction has committed."""
        return await self.submit(fn).wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        if self._running:
            raise RuntimeError("GroupWriter.run is already running")
        self._running = True
        self._conn = await trio.to_thread.run_sync(self._connect)
        task_status.started()
        try:
            while True:
                if not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                outcomes = await trio.to_thread.run_sync(self._commit_batch, batch,
                                                         abandon_on_cancel=False)
                for pending, (result, error) in zip(batch, outcomes, strict=True):
                    pending._resolve(result, error)
        finally:
            self._closed = True
            queued, self._queue = self._queue, []
            for pending in queued:
                pending._resolve(None, WriterClosed("the writer stopped before this write"))
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._running = False

    def _connect(self) -> Connection:
        conn = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            conn = conn.execution_options(sqlite_begin="IMMEDIATE")
        return conn

    def _commit_batch(self, batch: list[PendingWrite[Any]]
                      ) -> list[tuple[Any, BaseException | None]]:
        """In the writer thread: run the batch in one transaction, commit it.

        Optimistic, without a SAVEPOINT per write (they doubled the statements): if a
        function raises, the transaction is rolled back and the batch re-run without
        it, so it fails alone. A function may therefore run more than once; only the
        run that committed counts (write functions touch nothing but ``conn``).

        Consecutive writes of a mergeable type (``store.SnapshotWrite``: a static
        ``run_many(conn, writes) -> [error or None]`` and a ``merge_key``) run as one
        call, one statement for many channels; a refusal in it changed nothing."""
        started = time.perf_counter()
        refused: dict[int, BaseException] = {}
        merge = True
        while True:
            results: dict[int, Any] = {}
            try:
                if self._conn is None:  # the last failure may have broken the connection
                    self._conn = self._connect()
                conn = self._conn
                with conn.begin():
                    index = 0
                    while index < len(batch):
                        if index in refused:
                            index += 1
                            continue
                        run = _mergeable_run(batch, index, refused) if merge else []
                        if len(run) > 1:
                            try:
                                kind: Any = type(batch[index].fn)
                                outcomes = kind.run_many(conn, [batch[i].fn for i in run])
                            except Exception as exc:
                                merge = False  # run them one by one to find the culprit
                                raise _Refused from exc
                            for i, error in zip(run, outcomes, strict=True):
                                if error is None:
                                    results[i] = None
                                else:  # the statement left that row untouched
                                    refused[i] = error
                            index = run[-1] + 1
                            continue
                        try:
                            results[index] = batch[index].fn(conn)
                        except Exception as exc:
                            refused[index] = exc
                            raise _Refused from exc
                        index += 1
                    if self.before_commit is not None:
                        self.before_commit(len(batch))
                # leaving the block committed the transaction
            except _Refused:
                continue  # rolled back: run the batch again without the refused write
            except Exception as exc:
                self.stats.failed_commits += 1
                if self._conn is not None:
                    # A dead connection may fail to close; drop it anyway.
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                failure = CommitFailed(
                    f"commit of a batch of {len(batch)} writes failed: {exc}")
                failure.__cause__ = exc
                return [(None, refused.get(i, failure)) for i in range(len(batch))]
            break
        self.stats.commits += 1
        self.stats.writes += len(results)
        self.stats.commit_seconds += time.perf_counter() - started
        return [(results.get(i), refused.get(i)) for i in range(len(batch))]


def _mergeable_run(batch: list[PendingWrite[Any]], start: int,
                   refused: dict[int, BaseException]) -> list[int]:
    """Indexes from ``start`` of consecutive writes of one mergeable type (a
    ``run_many`` static method and a ``merge_key``), keys distinct, at most the type's
    ``MERGE_LIMIT``; refused ones skipped. Empty if ``batch[start]`` is not mergeable."""
    kind = type(batch[start].fn)
    if getattr(kind, "run_many", None) is None:
        return []
    limit: int = getattr(kind, "MERGE_LIMIT", 100)
    run: list[int] = []
    keys: set[Any] = set()
    index = start
    while index < len(batch) and len(run) < limit:
        if index in refused:
            index += 1
            continue
        fn = batch[index].fn
        if type(fn) is not kind or fn.merge_key in keys:  # type: ignore[attr-defined]
            break
        keys.add(fn.merge_key)  # type: ignore[attr-defined]
        run.append(index)
        index += 1
    return run


class _Refused(Exception):
    """Internal: a write function raised; its batch is re-run without it."""
