"""``recover``: store what a crashed (or stopped) process left in its spool.

Replays every journaled operation, dead letters included, in order, with the same
grouping of steps into documents as before, so that a step already stored is rewritten
in place, never duplicated. Safe to run twice: each operation leaves the spool once
every store has it.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import anyio

from ._config import SystemConfig, load_config
from ._exceptions import ConfigError
from ._spool import Journal, Spool
from ._wiring import build_writer, make_queue


class RecoverReport(NamedTuple):
    found: int  # operations in the spool when recovery started (dead letters included)
    stored: int  # of those, now in every store
    failed: int  # still failing: left in the spool as dead letters
    failures: list[str]


def recover(
    spool_path: str | os.PathLike[str], config: Any = None, *, timeout: float | None = None
) -> RecoverReport:
    """Replay the spool at ``spool_path`` into the stores of ``config`` (by default the
    configuration the spool was written with).

    :raises SpoolBusy: a live process still holds the spool.
    :raises ConfigError: no configuration given and none recorded in the spool.
    :raises TimeoutError: not done within ``timeout`` (what is left stays in the spool).
    """
    if not os.path.exists(spool_path):
        raise FileNotFoundError(f"no spool at {spool_path}")
    spool = Spool(spool_path)
    try:
        cfg = _config_for(spool, config)
        spool.revive()
        found = spool.count()
        if found == 0:
            return RecoverReport(0, 0, 0, [])
        queue = make_queue(cfg)
        journal = Journal(spool, max_in_memory=cfg.writer.queue_size, spill=True, inline=True)
        journal.backlog = True
        writer = build_writer(cfg, queue, own_thread=True, journal=journal)
        queue.close()  # nothing new: the writer stops once the spool is drained

        async def run() -> None:
            with anyio.fail_after(timeout):
                await writer.run()

        anyio.run(run)
        failed = spool.count(dead=True)
        return RecoverReport(found, found - spool.count(), failed,
                             [text for _, text in writer.stats.failures])
    finally:
        spool.close()


def _config_for(spool: Spool, config: Any) -> SystemConfig:
    if config is not None:
        return load_config(config)
    recorded = spool.get_meta("config")
    if recorded is None:
        raise ConfigError("", f"spool {spool.path} records no configuration; pass one")
    return load_config(json.loads(recorded))
