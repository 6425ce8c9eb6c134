"""The spool: a durable journal of accepted operations (one SQLite file).

The writer journals every operation it takes from the in-memory queue before it commits
it anywhere, records how steps were grouped into runs (so a replay rewrites exactly the
same documents), and deletes each operation once every sink has it. An operation that
failed permanently stays as a dead letter with its error, until ``recover`` replays it.

With ``on_full: spill`` the writer also *evicts*: once more than ``queue_size``
operations are held in memory, the ones past the bound keep only their row here and are
read back, in order, when the stores catch up. The training thread never touches this
file.

A spool belongs to one process at a time (an advisory lock on ``PATH.lock``); rows left
by a process that died are replayed by the next storer that opens it, or by
``asyncstore recover PATH``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import _codec
from ._documents import Write
from ._exceptions import CodecError
from ._queue import Op, StepOp, WritesOp

PENDING, DEAD = 0, 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    grp TEXT,
    state INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
"""


class SpoolBusy(RuntimeError):
    """Another live process holds this spool."""


def op_to_bytes(op: Op) -> bytes:
    if isinstance(op, StepOp):
        return _codec.encode_snapshot(
            {"k": "step", "e": op.experiment, "p": op.phase, "i": op.index,
             "b": op.blob if op.blob is not None else _codec.encode_snapshot(op.snapshot)}
        )
    writes = [{f.name: getattr(w, f.name) for f in dataclasses.fields(w)} for w in op.writes]
    return _codec.encode_snapshot(
        {"k": "writes", "what": op.what, "level": op.level, "w": writes, "x": op.extra}
    )


def op_from_bytes(body: bytes) -> Op:
    """:raises CodecError: the row is not an operation of this format."""
    d = _codec.decode(body)
    try:
        if d["k"] == "step":
            return StepOp(d["e"], d["p"], d["i"], d["b"])
        if d["k"] == "writes":
            return WritesOp(d["what"], [Write(**w) for w in d["w"]], d["level"], extra=d["x"])
    except (KeyError, TypeError) as exc:
        raise CodecError(f"malformed spool row: {exc}") from None
    raise CodecError(f"unknown spool row kind {d.get('k')!r}")


class Spool:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise SpoolBusy(f"spool {self.path} is in use by another process") from None
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        # Rows from an earlier process: replayed first. Their sequence numbers were
        # that process's, so they count for no flush() of this one.
        self._conn.execute("UPDATE ops SET seq = 0")
        self.leftover = self.count()

    def set_meta(self, key: str, value: bytes) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (key, value))

    def get_meta(self, key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            fcntl.flock(self._lockfile, fcntl.LOCK_UN)
            self._lockfile.close()

    # ------------------------------------------------------------------ writer side

    def append(self, ops: Sequence[Op]) -> None:
        """Journal ``ops`` (setting ``op.spool_id``) in one transaction."""
        rows = [(op.seq, op_to_bytes(op)) for op in ops]
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                # AUTOINCREMENT never reuses an id: new ones follow the sequence, not
                # MAX(id) (rows already done are deleted).
                row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()
                last = row[0] if row else 0
                c.executemany("INSERT INTO ops (seq, body) VALUES (?, ?)", rows)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        for k, op in enumerate(ops):  # ids are consecutive inside one transaction
            op.spool_id = last + 1 + k

    def grouped(self, ops: Sequence[StepOp], first: int, count: int) -> None:
        ids = [op.spool_id for op in ops if op.spool_id]
        if ids:
            self._execute_many("UPDATE ops SET grp = ? WHERE id = ?",
                               [(f"{first}:{count}", i) for i in ids])

    def done(self, ids: Iterable[int]) -> None:
        self._execute_many("DELETE FROM ops WHERE id = ?", [(i,) for i in ids if i])

    def dead(self, ids: Iterable[int], error: str) -> None:
        self._execute_many("UPDATE ops SET state = 2, error = ? WHERE id = ?",
                           [(error, i) for i in ids if i])

    def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(sql, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def load(self, after: int, limit: int, *, dead: bool = False) -> list[Op]:
        """Up to ``limit`` journaled ops with id > ``after``, in order (dead letters
        only when ``dead``), with their recorded grouping."""
        states = (PENDING, DEAD) if dead else (PENDING,)
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, seq, body, grp FROM ops WHERE id > ? AND state IN (?, ?) "
                "ORDER BY id LIMIT ?",
                (after, states[0], states[-1], limit),
            ).fetchall()
        out = []
        for row_id, seq, body, grp in rows:
            op = op_from_bytes(body)
            op.spool_id, op.seq = row_id, seq
            if grp and isinstance(op, StepOp):
                first, count = (int(x) for x in grp.split(":"))
                op.group = (first, count)
            out.append(op)
        return out

    def count(self, *, dead: bool | None = None) -> int:
        sql = "SELECT COUNT(*) FROM ops"
        if dead is not None:
            sql += f" WHERE state = {DEAD if dead else PENDING}"
        with self._lock:
            return int(self._conn.execute(sql).fetchone()[0])

    def dead_letters(self) -> list[tuple[int, str]]:
        with self._lock:
            return [(int(i), str(e)) for i, e in self._conn.execute(
                "SELECT id, error FROM ops WHERE state = 2 ORDER BY id")]

    def revive(self) -> int:
        """Make every dead letter pending again (for ``recover``)."""
        with self._lock:
            return self._conn.execute(
                "UPDATE ops SET state = 0, error = NULL WHERE state = 2"
            ).rowcount


class Journal:
    """The writer's use of a spool: journal what it takes, keep in memory only what fits
    (the rest waits in the spool, in order), and record what became of each operation.

    :param inline: call SQLite on the writer's own thread (``DataStorer``) rather than
        in a worker thread (``AsyncDataStorer``, whose writer shares the caller's loop).
    :param spill: evict operations past ``max_in_memory`` to the spool.
    """

    def __init__(self, spool: Spool, *, max_in_memory: int, spill: bool, inline: bool) -> None:
        self.spool = spool
        self.max_in_memory = max_in_memory
        self.spill = spill
        self.inline = inline
        self.cursor = 0  # every journaled op with id <= cursor has been handed to the writer
        self.backlog = spool.leftover > 0  # ops wait in the spool: everything goes through it
        self.evicted = 0
        self._done: list[int] = []
        self._dead: list[tuple[list[int], str]] = []

    async def _io(self, fn: Any, *args: Any) -> Any:
        if self.inline:
            return fn(*args)
        import anyio.to_thread

        return await anyio.to_thread.run_sync(fn, *args)

    async def admit(self, new: list[Op], in_memory: int) -> list[Op]:
        """Journal ``new``; return the ops the writer should batch now, in order."""
        if new:
            await self._io(self.spool.append, new)
        room = self.max_in_memory - in_memory
        if not self.backlog:
            keep = new if not self.spill or len(new) <= room else new[: max(room, 0)]
            if keep:
                self.cursor = keep[-1].spool_id
            if len(keep) < len(new):
                self.evicted += len(new) - len(keep)
                self.backlog = True
            return keep
        if self.spill:
            self.evicted += len(new)
        if room <= 0:
            return []
        loaded: list[Op] = await self._io(self.spool.load, self.cursor, room)
        if loaded:
            self.cursor = loaded[-1].spool_id
        if len(loaded) < room:
            self.backlog = False  # caught up: what comes next can stay in memory
        return loaded

    async def grouped(self, ops: list[StepOp], first: int, count: int) -> None:
        if any(op.group is None for op in ops):
            await self._io(self.spool.grouped, ops, first, count)

    def finished(self, ops: Iterable[Op], error: str | None) -> None:
        ids = [op.spool_id for op in ops if op.spool_id]
        if error is None:
            self._done.extend(ids)
        else:
            self._dead.append((ids, error))

    async def sync(self) -> None:
        """Record in the spool what has been stored or has failed since the last call."""
        done, self._done = self._done, []
        dead, self._dead = self._dead, []
        if done:
            await self._io(self.spool.done, done)
        for ids, error in dead:
            await self._io(self.spool.dead, ids, error)
