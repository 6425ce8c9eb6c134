"""Builds a writer from a configuration: its sinks, and its journal when a spool is set.
Shared by ``DataStorer``, ``AsyncDataStorer`` and ``recover``."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ._config import SystemConfig
from ._queue import OpQueue
from ._sinks import DocumentSink
from ._spool import Journal, Spool
from ._wandb import WandbSink
from ._writer import RetryPolicy, Sink, Writer
from .stores import open_store

log = logging.getLogger("asyncstore")


def build_sinks(config: SystemConfig, *, own_thread: bool) -> list[Sink]:
    """The sinks of every write database. ``own_thread``: the writer has a thread to
    itself (DataStorer), so SQLite commits inline and Firestore uses its async client in
    that thread's loop; otherwise (the caller's loop) both work in worker threads.
    W&B (unless ``wandb.mode`` resolves to ``disabled``) is one more sink, whose W&B
    calls run in a worker process."""
    sinks: list[Sink] = []
    for db in config.database.write_databases:
        if db.data_resolution == 0:
            continue
        store = open_store(db)
        if db.name == "local":
            store.inline = own_thread
        else:
            store.threaded = not own_thread
        sinks.append(DocumentSink(store, db.data_resolution))
    if config.wandb.resolved_mode != "disabled":
        sinks.append(WandbSink(config.wandb))
    return sinks


def make_queue(config: SystemConfig) -> OpQueue:
    w = config.writer
    return OpQueue(w.queue_size, spill=w.on_full == "spill" and w.spool_path is not None)


def open_journal(config: SystemConfig, *, own_thread: bool) -> Journal | None:
    """The spool's journal, or None without ``writer.spool_path``.

    :raises SpoolBusy: another live process holds the spool.
    """
    w = config.writer
    if w.spool_path is None:
        return None
    spool = Spool(w.spool_path)
    spool.set_meta("config", json.dumps(_portable(config)).encode())
    if spool.leftover:
        log.warning("asyncstore: replaying %d operation(s) left in spool %s by an earlier "
                    "process", spool.leftover, w.spool_path)
    return Journal(spool, max_in_memory=w.queue_size, spill=w.on_full == "spill",
                   inline=own_thread)


def _portable(config: SystemConfig) -> dict[str, Any]:
    """The configuration as ``recover`` will need it from any directory: paths made
    absolute, the emulator host that was in force recorded. Holds no secret (only the
    names of the environment variables that hold them)."""
    data: dict[str, Any] = json.loads(config.model_dump_json())
    for db, live in zip(data["database"]["write_databases"], config.database.write_databases,
                        strict=True):
        if db["name"] == "local":
            db["path"] = os.path.abspath(db["path"])
        else:
            db["emulator_host"] = live.resolved_emulator_host  # type: ignore[union-attr]
    if data["writer"]["spool_path"]:
        data["writer"]["spool_path"] = os.path.abspath(data["writer"]["spool_path"])
    return data


def build_writer(
    config: SystemConfig, queue: OpQueue, *, own_thread: bool, journal: Journal | None = None
) -> Writer:
    w = config.writer
    return Writer(
        queue,
        build_sinks(config, own_thread=own_thread),
        flush_interval=w.flush_interval,
        max_batch_steps=w.max_batch_steps,
        retry=RetryPolicy(w.retry.attempts, w.retry.initial, w.retry.max_wait, w.retry.deadline),
        journal=journal,
    )
