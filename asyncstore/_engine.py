"""What both storers are made of: the front, the queue, the journal and the writer, and
what they report (``stats()``, the failures ``flush`` raises)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._config import SystemConfig
from ._exceptions import StorageError
from ._front import Front, saved_metric_names
from ._wiring import build_writer, make_queue, open_journal


class StorerStats(NamedTuple):
    accepted: int
    written: int
    pending: int
    retried: int
    failed: int
    spilled: int
    high_water: int
    last_error: str | None
    blocked: int = 0  # saves that found the queue full and waited for room (on_full: block)
    blocked_seconds: float = 0.0  # how long they waited, in all


class Engine:
    def __init__(
        self, config: SystemConfig, metric_config: Iterable[Mapping[str, Any]], *,
        own_thread: bool,
    ) -> None:
        self.front = Front(config, saved_metric_names(metric_config))
        self.queue = make_queue(config)
        self.journal = open_journal(config, own_thread=own_thread)
        self.writer = build_writer(config, self.queue, own_thread=own_thread,
                                   journal=self.journal)
        self._reported = 0  # failures already raised

    def stats(self) -> StorerStats:
        q, s = self.queue, self.writer.stats
        return StorerStats(
            accepted=q.accepted,
            written=s.written,
            pending=q.pending,
            retried=s.retried,
            failed=s.failed,
            spilled=self.journal.evicted if self.journal is not None else 0,
            high_water=q.high_water,
            last_error=s.last_error,
            blocked=q.waits,
            blocked_seconds=q.waited,
        )

    def raise_failures(self, target: int) -> None:
        """Raise what failed permanently among the ops up to ``target``, once.

        :raises StorageError: listing them.
        """
        failures = self.writer.stats.failures
        new = [text for seq, text in failures[self._reported :] if seq <= target]
        if new:
            self._reported = len(failures)
            raise StorageError(f"{len(new)} operation(s) could not be stored", new)
