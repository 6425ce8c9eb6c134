"""The writer: one engine that batches accepted operations and hands them to sinks.

It knows nothing about Firestore, SQLite or W&B: a :class:`Sink` turns units into
payloads and commits them. The same :meth:`Writer.run` coroutine runs in a background
thread (``DataStorer``) or as a task of the caller's event loop (``AsyncDataStorer``).

    queue ──► batcher (runs of steps per experiment and phase, by count, bytes, age)
          ──► one lane per sink (ordered, retried with tenacity, never blocking the others)
          ──► completion (an op is done when every lane has it) ──► queue.mark_done
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import anyio
import anyio.lowlevel
import tenacity
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _codec, _layout
from ._documents import Write
from ._queue import Op, OpQueue, StepOp, WritesOp
from ._spool import Journal

log = logging.getLogger("asyncstore")

GROUP_BYTES = 3 * _layout.CHUNK_BYTES  # a run of steps closes at three full documents
# Seconds each sink may take to close once the caller has cut the writer short.
HURRIED_CLOSE = 2.0


@dataclass(eq=False)
class Unit:
    """What the writer hands to every sink at once: a run of steps, or one other op."""

    seq: int  # the highest op seq it holds
    level: int  # 2 for steps, else the op's level
    writes: list[Write]
    ops: list[Op]
    what: str
    remaining: int = 0
    failed: bool = False
    error: str | None = None
    first: int = 0  # for a run of steps: its first index and its count
    count: int = 0


class Sink(Protocol):
    name: str
    level: int  # the data_resolution of this sink: it takes units with unit.level <= level

    def payloads(self, units: Sequence[Unit]) -> list[tuple[Any, list[Unit]]]:
        """Split ``units`` into payloads, each committed (and retried) on its own, with
        the units each payload carries (a unit may span several payloads)."""

    async def commit(self, payload: Any) -> None: ...

    def is_transient(self, exc: BaseException) -> bool: ...

    async def aclose(self) -> None:
        """Finish and release the sink. May be cancelled (after ``HURRIED_CLOSE``
        seconds, when the caller cut the writer short): it must then let go at once."""


class RetryPolicy(NamedTuple):
    attempts: int = 10
    initial: float = 0.1
    max_wait: float = 10.0
    deadline: float = 300.0


DEFAULT_RETRY = RetryPolicy()


class WriterStats:
    """Counters the writer keeps; read by ``stats()``."""

    def __init__(self) -> None:
        self.written = 0
        self.failed = 0
        self.retried = 0
        self.last_error: str | None = None
        self.failures: list[tuple[int, str]] = []  # (seq, text), for flush to report
        self.fatal: BaseException | None = None


# --------------------------------------------------------------------------- batching


class _Run:
    __slots__ = ("experiment", "group", "nbytes", "ops", "phase", "started")

    def __init__(self, op: StepOp) -> None:
        self.experiment, self.phase = op.experiment, op.phase
        self.group = op.group  # replayed from a spool: close exactly as it was stored
        self.ops: list[StepOp] = []
        self.nbytes = 0
        self.started = time.monotonic()

    def unit(self) -> Unit:
        payload = b"".join(op.blob for op in self.ops)  # type: ignore[misc]
        first, count = self.ops[0].index, len(self.ops)
        last = first + count - 1
        return Unit(
            seq=self.ops[-1].seq,
            level=2,
            writes=_layout.group_writes(self.experiment, self.phase, first, count, payload),
            ops=list(self.ops),
            what=f"{self.phase} steps {first}-{last} of experiment {self.experiment!r}",
            first=first,
            count=count,
        )


class Batcher:
    def __init__(self, max_steps: int, max_age: float, max_bytes: int = GROUP_BYTES) -> None:
        self.max_steps, self.max_age, self.max_bytes = max_steps, max_age, max_bytes
        self._runs: dict[tuple[str, str], _Run] = {}
        self._ready: list[Unit] = []

    def add(self, op: Op) -> None:
        if isinstance(op, WritesOp):
            # Everything accepted before this op is committed before it: close all runs.
            self.close_all()
            self._ready.append(Unit(op.seq, op.level, list(op.writes), [op], op.what))
            return
        if op.blob is None:  # accelerator tensors: encode now, in the writer
            op.blob = _codec.encode_snapshot(op.snapshot)
            op.snapshot = None
        key = (op.experiment, op.phase)
        run = self._runs.get(key)
        if run is not None and (run.ops[-1].index + 1 != op.index or run.group != op.group):
            self._close(key)
            run = None
        if run is None:
            run = self._runs[key] = _Run(op)
        run.ops.append(op)
        run.nbytes += len(op.blob)
        if run.group is not None:
            if len(run.ops) >= run.group[1]:
                self._close(key)
        elif run.nbytes >= self.max_bytes or len(run.ops) >= self.max_steps:
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        self._ready.append(self._runs.pop(key).unit())

    def close_all(self) -> None:
        # In order of their first op, so units leave in (nearly) accepted order.
        for key in sorted(self._runs, key=lambda k: self._runs[k].ops[0].seq):
            self._close(key)

    def take_ready(self, force: bool) -> list[Unit]:
        if force:
            self.close_all()
        else:
            now = time.monotonic()
            for key in [
                k for k, r in self._runs.items()
                if now - r.started >= self.max_age and r.group is None
            ]:
                self._close(key)
        ready, self._ready = self._ready, []
        ready.sort(key=lambda u: u.seq)
        return ready

    def holds_up_to(self) -> int:
        """The smallest seq still held open (0 if none)."""
        return min((r.ops[0].seq for r in self._runs.values()), default=0)

    def empty(self) -> bool:
        return not self._runs and not self._ready


# --------------------------------------------------------------------------- the engine


class _Completion:
    """Advances the queue's watermark as units finish in every lane, in seq order."""

    def __init__(
        self, queue: OpQueue, stats: WriterStats, on_done: Callable[[Unit], None]
    ) -> None:
        self._queue, self._stats, self._on_done = queue, stats, on_done
        self._inflight: deque[Unit] = deque()

    def add(self, unit: Unit, lanes: int) -> None:
        unit.remaining = lanes
        self._inflight.append(unit)
        if lanes == 0:
            self.finish(unit, failed=False)

    def finish(self, unit: Unit, failed: bool) -> None:
        unit.remaining -= 1 if unit.remaining > 0 else 0
        unit.failed = unit.failed or failed
        inflight = self._inflight
        top = 0
        while inflight and inflight[0].remaining <= 0:
            done = inflight.popleft()
            self._on_done(done)
            if done.failed:
                self._stats.failed += len(done.ops)
            else:
                self._stats.written += len(done.ops)
            top = done.seq
        if top:
            self._queue.mark_done(top)


class _Lane:
    def __init__(self, writer: Writer, sink: Sink) -> None:
        self.writer, self.sink = writer, sink
        self.send: MemoryObjectSendStream[Unit]
        self.receive: MemoryObjectReceiveStream[Unit]
        self.send, self.receive = anyio.create_memory_object_stream[Unit](float("inf"))

    async def run(self) -> None:
        async with self.receive:
            async for unit in self.receive:
                units = [unit]
                while True:  # commit what is already waiting together
                    try:
                        units.append(self.receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._deliver(units)

    async def _deliver(self, units: list[Unit]) -> None:
        w = self.writer
        try:
            payloads = self.sink.payloads(units)
        except Exception as exc:  # noqa: BLE001 - a sink bug must not kill the writer
            w._fail(units, self.sink, exc)
            for u in units:
                w._completion.finish(u, failed=True)
            return
        # A unit is done in this lane once the last payload holding it is committed, not
        # when the whole backlog taken at once is: a slow sink (W&B behind a fast loop)
        # must free queue room as it goes, not in one lump after many seconds.
        last: dict[int, int] = {}
        for k, (_, members) in enumerate(payloads):
            for u in members:
                last[id(u)] = k
        for u in units:
            if id(u) not in last:  # nothing of it for this sink
                w._completion.finish(u, failed=False)
        failed: set[int] = set()
        for k, (payload, members) in enumerate(payloads):
            try:
                await w._retrying(self.sink, payload)
            except Exception as exc:  # noqa: BLE001 - reported through flush()/stats()
                todo = [u for u in members if id(u) not in failed]
                if len(todo) > 1 and not self.sink.is_transient(exc):
                    # One rejected document fails a whole (atomic) commit: commit the
                    # units one by one so that only the culprit fails.
                    for u in todo:
                        await self._deliver_alone(u, failed)
                else:
                    w._fail(todo, self.sink, exc)
                    failed.update(id(u) for u in todo)
            for u in members:
                if last[id(u)] == k:
                    w._completion.finish(u, failed=id(u) in failed)

    async def _deliver_alone(self, unit: Unit, failed: set[int]) -> None:
        try:
            for payload, _ in self.sink.payloads([unit]):
                await self.writer._retrying(self.sink, payload)
        except Exception as exc:  # noqa: BLE001 - reported through flush()/stats()
            self.writer._fail([unit], self.sink, exc)
            failed.add(id(unit))


class Writer:
    """Batches what ``queue`` accepts and delivers it to ``sinks``.

    :param tick: how often the writer looks at the queue when nobody wakes it.
    """

    def __init__(
        self,
        queue: OpQueue,
        sinks: Sequence[Sink],
        *,
        flush_interval: float = 0.25,
        max_batch_steps: int = 1000,
        retry: RetryPolicy = DEFAULT_RETRY,
        tick: float | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.queue = queue
        self.sinks = list(sinks)
        self.retry = retry
        self.stats = WriterStats()
        self.journal = journal
        # With a spool, a short tick keeps the window of not-yet-journaled steps small.
        default_tick = 0.02 if journal is not None else 0.05
        self.tick = tick if tick is not None else min(flush_interval, default_tick)
        self.inflight = 0  # ops taken from the queue and not yet done in every sink
        self._batcher = Batcher(max_batch_steps, flush_interval)
        self._completion = _Completion(queue, self.stats, self._unit_done)
        self._event: anyio.Event | None = None

    def _unit_done(self, unit: Unit) -> None:
        self.inflight -= len(unit.ops)
        if self.journal is not None:
            self.journal.finished(unit.ops, unit.error if unit.failed else None)

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Run until the queue is closed and everything accepted has been handled."""
        lanes = [_Lane(self, s) for s in self.sinks]
        self._event = anyio.Event()
        self.queue.set_waker(self._make_waker())
        cut_short = False
        try:
            async with anyio.create_task_group() as tg:
                for lane in lanes:
                    tg.start_soon(lane.run)
                try:
                    await self._produce(lanes)
                finally:
                    for lane in lanes:
                        lane.send.close()
            if self.journal is not None:
                await self.journal.sync()
        except BaseException as exc:
            cut_short = isinstance(exc, anyio.get_cancelled_exc_class())
            if not cut_short:
                self.stats.fatal = exc
                log.exception("asyncstore writer stopped by an unexpected error")
            raise
        finally:
            self.queue.set_waker(None)
            for sink in self.sinks:
                # Shielded, so a sink finishes cleanly; but when the caller cut the
                # writer short, only briefly: its bound on the wait is the caller's.
                with anyio.CancelScope(shield=True), anyio.move_on_after(
                    HURRIED_CLOSE if cut_short else math.inf
                ) as scope:
                    try:
                        await sink.aclose()
                    except Exception:
                        log.warning("closing sink %s failed", sink.name, exc_info=True)
                if scope.cancelled_caught:
                    log.warning("closing sink %s took over %.0f s; abandoned it",
                                sink.name, HURRIED_CLOSE)

    def _make_waker(self) -> Callable[[], None]:
        import threading

        import sniffio

        loop_thread = threading.get_ident()
        schedule: Callable[[Callable[[], None]], Any]
        if sniffio.current_async_library() == "trio":
            import trio

            schedule = trio.lowlevel.current_trio_token().run_sync_soon
        else:
            import asyncio

            schedule = asyncio.get_running_loop().call_soon_threadsafe

        def set_event() -> None:
            if self._event is not None:
                self._event.set()

        def wake() -> None:
            if threading.get_ident() == loop_thread:
                set_event()
            else:
                schedule(set_event)

        return wake

    async def _produce(self, lanes: list[_Lane]) -> None:
        q, journal = self.queue, self.journal
        while True:
            ops = q.take()
            if journal is not None:
                ops = await journal.admit(ops, self.inflight)
            self.inflight += len(ops)
            for op in ops:
                self._batcher.add(op)
            held = self._batcher.holds_up_to()
            force = q.closing or (held and q.flush_target >= held) or (q.waits > 0 and (
                q.pending >= q.maxsize
            ))
            for unit in self._batcher.take_ready(bool(force)):
                if journal is not None and unit.count:
                    # Before any store sees it: a replay must cut the same runs.
                    await journal.grouped(unit.ops, unit.first, unit.count)  # type: ignore[arg-type]
                takers = [lane for lane in lanes if unit.level <= lane.sink.level]
                self._completion.add(unit, len(takers))
                for lane in takers:
                    lane.send.send_nowait(unit)
            if journal is not None:
                await journal.sync()
            backlog = journal is not None and journal.backlog
            if q.closing and q.empty() and self._batcher.empty() and not backlog:
                return
            if ops:
                await anyio.lowlevel.checkpoint()
                continue
            with anyio.move_on_after(self.tick):
                assert self._event is not None
                await self._event.wait()
            self._event = anyio.Event()

    # ------------------------------------------------------------------ retrying

    async def _retrying(self, sink: Sink, payload: Any) -> None:
        r = self.retry

        def count(state: tenacity.RetryCallState) -> None:
            self.stats.retried += 1
            exc = state.outcome.exception() if state.outcome else None
            self.stats.last_error = f"{sink.name}: {_short(exc)} (retrying)"
            # One warning per trouble, not one per attempt: an outage retries for minutes.
            log.log(logging.WARNING if state.attempt_number == 1 else logging.DEBUG,
                    "store %s: %s; retrying (attempt %d)", sink.name, _short(exc),
                    state.attempt_number)

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(r.attempts) | tenacity.stop_after_delay(r.deadline),
            wait=tenacity.wait_exponential_jitter(
                multiplier=r.initial, max=r.max_wait, jitter=r.initial
            ),
            retry=tenacity.retry_if_exception(sink.is_transient),
            sleep=anyio.sleep,
            before_sleep=count,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await sink.commit(payload)

    def _fail(self, units: Sequence[Unit], sink: Sink, exc: BaseException) -> None:
        reason = _short(exc)
        self.stats.last_error = f"{sink.name}: {reason}"
        log.error("store %s: %d operation(s) not stored: %s", sink.name, len(units), reason)
        for u in units:
            text = f"{u.what} in store {sink.name!r}: {reason}"
            u.error = text
            self.stats.failures.append((u.seq, text))


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
