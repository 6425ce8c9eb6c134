"""``AsyncDataStorer``: the same storer for code that lives in an event loop.

The writer is the very same :class:`~asyncstore._writer.Writer` as ``DataStorer``'s,
run as a task of the caller's loop (asyncio or trio, through anyio) instead of in a
thread of its own. Awaiting a save only checks, encodes and enqueues; it waits only
when the queue is full. Blocking SDK work (SQLite, Firestore under trio) runs in worker
threads, so the loop never stalls on it.

    async with AsyncDataStorer(metric_config, config) as store:
        await store.create_experiment(result)
        await store.save_training_step(result.id, step)
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from . import _wandb, comparisons
from ._config import SystemConfig
from ._defaults import resolve_config
from ._exceptions import StorageError
from ._engine import Engine, StorerStats
from ._queue import Op
from ._results import HPOResult, HPOStepResult, TrainingResult, TrainingStepResult

log = logging.getLogger("asyncstore")

YIELD_EVERY = 64  # saves between two full checkpoints of a task that only saves


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class AsyncDataStorer:
    """``DataStorer``'s methods as coroutines, with the writer in the caller's loop.

    Use it as ``async with``: entering starts the writer task, leaving stores everything
    accepted (``aclose``). Bound how long that may take with ``anyio.fail_after`` /
    ``move_on_after`` around the block or around ``aclose()``.
    """

    def __init__(
        self,
        metric_config: list[dict[str, Any]],
        config: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig | None = None,
    ) -> None:
        self.config = resolve_config(config, "AsyncDataStorer")
        self._engine = e = Engine(self.config, metric_config, own_thread=False)
        self._front, self._queue, self._journal, self._writer = (
            e.front, e.queue, e.journal, e.writer
        )
        self._state = _State.UNOPENED
        self._tg: anyio.abc.TaskGroup | None = None
        self._writer_done: anyio.Event | None = None
        self._unstored_reported = False
        self._aclose_cut_short = False
        self._writer_scope: anyio.CancelScope | None = None
        self._puts = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncDataStorer:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"this AsyncDataStorer is {self._state.value}; make a new one")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._writer_done = anyio.Event()
        self._tg.start_soon(self._run_writer, name="asyncstore-writer")
        self._state = _State.OPENED
        return self

    async def _run_writer(self) -> None:
        assert self._writer_done is not None
        # Shielded: cancelling the caller must not kill the writer while it stores what
        # was accepted. It stops when the queue is closed and drained, or when
        # __aexit__ cancels this scope.
        with anyio.CancelScope(shield=True) as self._writer_scope:
            try:
                await self._writer.run()
            finally:
                self._writer_done.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None
        try:
            if self._aclose_cut_short:
                pass  # the caller already bounded the wait; stop now
            elif exc is None:
                await self.aclose()
            else:
                # The body failed or was cancelled: still store what was accepted, within
                # the exit grace period, shielded from the cancellation that is unwinding.
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(self.config.writer.exit_grace_period):
                        try:
                            await self.aclose()
                        except Exception:
                            log.exception("closing the AsyncDataStorer after an error")
                    self._report_unstored()
        finally:
            # Normally the writer has finished; if aclose was cut short, stop it now.
            if self._writer_scope is not None:
                self._writer_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self._state = _State.CLOSED
            self._report_unstored()
            if self._journal is not None:
                self._journal.spool.close()
        return False

    def _report_unstored(self) -> None:
        if self._queue.pending and not self._unstored_reported:
            self._unstored_reported = True
            log.error(
                "asyncstore: %d accepted operation(s) were not stored (%s)",
                self._queue.pending, self._writer.stats.last_error,
            )

    def _check_open(self) -> None:
        if self._state is not _State.OPENED or self._queue.closing:
            state = "closed" if self._queue.closing else self._state.value
            raise RuntimeError(
                f"this AsyncDataStorer is {state}: use it inside `async with AsyncDataStorer(...)`"
            )

    async def aclose(self) -> None:
        """Store everything accepted, then stop the writer. Safe to call twice.

        :raises StorageError: something failed permanently (listed).
        """
        if self._state is _State.UNOPENED:
            self._state = _State.CLOSED
            return
        target = self._queue.accepted
        self._queue.close()
        assert self._writer_done is not None
        try:
            await self._writer_done.wait()
        except anyio.get_cancelled_exc_class():
            self._aclose_cut_short = True
            raise
        self._raise_failures(target)

    async def flush(self) -> None:
        """Wait until everything accepted before this call is stored in every store.

        Bound the wait with ``anyio.fail_after``.

        :raises StorageError: something failed permanently (listed).
        """
        self._check_open()
        target = self._queue.request_flush()
        await self._wait_done(target)
        self._raise_failures(target)

    async def _wait_done(self, target: int) -> None:
        delay = 0.001
        while self._queue.done < target:
            if self._writer_done is not None and self._writer_done.is_set():
                raise StorageError(
                    f"the writer stopped: {self._writer.stats.fatal!r}",
                    [f"{self._queue.pending} accepted operation(s) not stored"],
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _raise_failures(self, target: int) -> None:
        self._engine.raise_failures(target)

    def stats(self) -> StorerStats:
        """Counters, as ``DataStorer.stats()``."""
        return self._engine.stats()

    async def _put(self, build: Any, *args: Any) -> None:
        # Before anything is built, so a cancellation here leaves nothing half-done.
        # A full checkpoint every YIELD_EVERY saves: a task that only awaits saves must
        # still let the writer (and the loop's other tasks) run, without paying a
        # scheduler round trip on every step.
        self._puts += 1
        if self._puts % YIELD_EVERY == 0:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._queue.full():
            # Back-pressure: wait for room *before* building the op, so that a
            # cancellation here leaves nothing half-done (no step number taken).
            self._queue.waits += 1
            self._queue.request_flush()
            delay = 0.001
            began = time.monotonic()
            try:
                while self._queue.full():
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    self._check_open()
            finally:
                self._queue.waited += time.monotonic() - began
        op: Op = build(*args)
        # No await between building and queueing: nothing else in this loop can take
        # the room we just saw.
        if self._queue.try_put(op) is None:  # pragma: no cover - a misuse across threads
            raise RuntimeError("an AsyncDataStorer must be used from one event loop")

    # ------------------------------------------------------------------ the seed's methods

    async def create_experiment(self, experiment: TrainingResult) -> None:
        await self._put(self._front.experiment, experiment)

    async def save_training_step(self, parent: str, result: TrainingStepResult) -> None:
        await self._put(self._front.step, parent, result, "training")

    async def save_training_result(self, result: TrainingResult) -> None:
        await self._put(self._front.result, result, "training")

    async def save_evaluation_step(self, parent: str, result: TrainingStepResult) -> None:
        await self._put(self._front.step, parent, result, "evaluation")

    async def save_evaluation_result(self, result: TrainingResult) -> None:
        await self._put(self._front.result, result, "evaluation")

    async def create_hpo_sweep(self, sweep: HPOResult) -> None:
        await self._put(self._front.hpo_sweep, sweep)

    async def save_hpo_step(self, parent: str, result: HPOStepResult) -> None:
        await self._put(self._front.hpo_step, parent, result)

    async def save_hpo_result(self, result: HPOResult) -> None:
        await self._put(self._front.hpo_result, result)

    async def save_model(
        self, experiment: str, m: Any, model_config: dict[str, Any] | None = None
    ) -> None:
        await self._put(self._front.model, experiment, m, model_config)

    @contextlib.asynccontextmanager
    async def experiment(self, result: TrainingResult) -> AsyncIterator[TrainingResult]:
        """Create the experiment on entry; on a normal exit mark ``result`` finished and
        save it (as the training or evaluation result, by its ``result_type``)."""
        await self.create_experiment(result)
        yield result
        if result.end_time is None:
            result.mark_finished()
        if result.result_type == "evaluation":
            await self.save_evaluation_result(result)
        else:
            await self.save_training_result(result)

    async def create_artifact(self, content: dict[str, Any]) -> Any:
        """A ``wandb.Artifact`` holding ``content`` (as ``content.json``), built in a
        worker thread (it imports wandb and writes one small local file)."""
        return await anyio.to_thread.run_sync(_wandb.create_artifact, content)

    @staticmethod
    def average_nested_data(data: Any) -> float:
        return comparisons.average_nested_data(data)
