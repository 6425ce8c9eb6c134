"""The bounded hand-over between the callers (any thread, any loop) and the writer.

A caller's ``put`` costs a lock and a deque append; it never touches the writer's event
loop. The writer polls every tick and is woken explicitly only to flush or close, so the
training thread never pays for a cross-thread wake-up on the hot path.

``pending`` (accepted and not yet stored or failed) never exceeds ``maxsize``: an
operation leaves the count only when every sink has it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._documents import Write


@dataclass(slots=True)
class StepOp:
    """One training or evaluation step, encoded on the caller's thread (``blob``), or
    snapshotted there when it holds accelerator tensors (``snapshot``)."""

    experiment: str
    phase: str
    index: int
    blob: bytes | None
    snapshot: Any = None
    seq: int = 0
    spool_id: int = 0  # its row in the spool, once journaled
    group: tuple[int, int] | None = None  # (first, count) of the run it was stored in


@dataclass(slots=True)
class WritesOp:
    """Anything else: documents ready to commit (an experiment, a result...)."""

    what: str
    writes: list[Write]
    level: int = 1  # the lowest data_resolution of a store that keeps it
    seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # for non-document sinks
    spool_id: int = 0


Op = StepOp | WritesOp


class QueueClosed(RuntimeError):
    pass


class OpQueue:
    def __init__(self, maxsize: int, *, spill: bool = False) -> None:
        self.maxsize = maxsize
        # spill: the writer moves what does not fit in memory to the spool, so only
        # operations it has not yet taken count against maxsize here.
        self.spill = spill
        self._items: deque[Op] = deque()
        # Reentrant: a signal handler that drains may interrupt this thread inside put().
        self._cv = threading.Condition(threading.RLock())
        self.accepted = 0  # seq of the last accepted op
        self.done = 0  # every op with seq <= done is stored or has failed
        self.flush_target = 0  # the writer must not hold back ops up to this seq
        self.high_water = 0
        self.waits = 0  # how often a producer waited for room
        self.waited = 0.0  # and for how long in all, in seconds
        self.closing = False
        self._waker: Callable[[], None] | None = None

    # ------------------------------------------------------------------ producers

    def full(self) -> bool:
        if self.spill:
            return len(self._items) >= self.maxsize
        return self.accepted - self.done >= self.maxsize

    def put(self, op: Op, timeout: float | None = None) -> int:
        """Accept ``op``; wait for room when full. Returns its sequence number.

        :raises QueueClosed: the storer is closed.
        :raises TimeoutError: no room within ``timeout``.
        """
        with self._cv:
            if self.full():
                self.waits += 1
                self._wake()  # let the writer know someone waits: flush what it holds
                began = time.monotonic()
                deadline = None if timeout is None else began + timeout
                try:
                    while self.full() and not self.closing:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError("the storage queue stayed full")
                        self._cv.wait(left)
                finally:
                    self.waited += time.monotonic() - began
            return self._accept(op)

    def try_put(self, op: Op) -> int | None:
        """Accept ``op`` if there is room now; None otherwise."""
        with self._cv:
            if self.full():
                self.waits += 1
                self._wake()
                return None
            return self._accept(op)

    def _accept(self, op: Op) -> int:
        if self.closing:
            raise QueueClosed("the storer is closed")
        self.accepted += 1
        op.seq = self.accepted
        self._items.append(op)
        depth = self.accepted - self.done
        self.high_water = max(self.high_water, depth)
        return self.accepted

    @property
    def pending(self) -> int:
        return self.accepted - self.done

    def request_flush(self) -> int:
        with self._cv:
            self.flush_target = max(self.flush_target, self.accepted)
            target = self.accepted
        self._wake()
        return target

    def close(self) -> None:
        with self._cv:
            self.closing = True
            self.flush_target = self.accepted
            self._cv.notify_all()
        self._wake()

    def wait_done(self, seq: int, timeout: float | None) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self.done >= seq, timeout)

    # ------------------------------------------------------------------ the writer

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        self._waker = waker

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None:
            try:
                waker()
            except RuntimeError:  # the writer's loop has ended
                pass

    def take(self, limit: int = 100_000) -> list[Op]:
        items = self._items
        out: list[Op] = []
        while items and len(out) < limit:
            out.append(items.popleft())
        if out and self.spill and self.waits:
            with self._cv:
                self._cv.notify_all()  # room again for a producer held by the safety valve
        return out

    def empty(self) -> bool:
        return not self._items

    def mark_done(self, seq: int) -> None:
        with self._cv:
            if seq > self.done:
                self.done = seq
                self._cv.notify_all()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's queued ops (the parent writes them) and
        replace locks that another thread may have held at the fork."""
        self._cv = threading.Condition(threading.RLock())
        self._items.clear()
        self.done = self.accepted
        self._waker = None
