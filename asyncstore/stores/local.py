"""The embedded document store: one SQLite file, safe for several processes.

Each document is one row ``(tbl, id, body)`` with the body in the value codec; the
``experiment`` and ``phase`` columns repeat two body fields so that the queries the
layout needs are indexed. WAL mode lets readers run beside a writer; ``BEGIN
IMMEDIATE`` makes every commit (merges included) atomic across processes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from .. import _codec
from .._documents import Write, apply_updates, coalesce, merge_into, plain, rank_updates
from .._exceptions import CodecError

__all__ = ["LocalStore", "merge_into"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    tbl TEXT NOT NULL,
    id TEXT NOT NULL,
    experiment TEXT,
    phase TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE INDEX IF NOT EXISTS documents_by_experiment ON documents (tbl, experiment, phase);
"""


class LocalStore:
    """Writer and reader of the embedded store. Thread-safe; one connection."""

    name = "local"
    max_commit_bytes = 64 * 1024 * 1024
    max_commit_writes = 10_000

    def __init__(
        self,
        path: str | Path,
        table_names: Mapping[str, str] | None = None,
        *,
        save_models: bool = True,
    ) -> None:
        self.path = Path(path)
        self._tables = dict(table_names or {})
        self.save_models = save_models
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.inline = False

    def _table(self, table: str) -> str:
        return self._tables.get(table, table)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    # ------------------------------------------------------------------ writer side

    def prepare(self, writes: Sequence[Write]) -> list[Write]:
        """What this store commits of ``writes``: model weights only with
        ``save_models``, and one write per document where several fold into one."""
        if not self.save_models:
            writes = [w for w in writes if not w.model_weights]
        return coalesce(writes)

    def commit_sync(self, writes: Sequence[Write]) -> None:
        writes = self.prepare(writes)
        if not writes:
            return
        with self._lock:
            conn = self._connection()
            # BEGIN IMMEDIATE takes the database's write lock before reading: a ranked
            # write's read-modify-write is atomic across threads and processes.
            conn.execute("BEGIN IMMEDIATE")
            try:
                for w in writes:
                    tbl = self._table(w.table)
                    fields = dict(w.fields)
                    if w.merge or w.rank is not None:
                        row = conn.execute(
                            "SELECT body FROM documents WHERE tbl = ? AND id = ?", (tbl, w.doc_id)
                        ).fetchone()
                        if row is not None:
                            fields = merge_into(_codec.decode(row[0]), w.fields)
                        else:
                            fields = plain(fields)
                        if w.rank is not None:
                            apply_updates(fields, rank_updates(fields, w.rank))
                    conn.execute(
                        "INSERT OR REPLACE INTO documents (tbl, id, experiment, phase, body)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (tbl, w.doc_id, _str_or_none(fields.get("experiment")),
                         _str_or_none(fields.get("phase")), _codec.encode(fields)),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def commit(self, writes: Sequence[Write]) -> None:
        if self.inline:
            # The writer has a thread of its own (DataStorer): no need for another, and
            # none can be started while the interpreter exits.
            self.commit_sync(writes)
        else:
            # sqlite3 releases the GIL while it works; a worker thread keeps the loop free.
            await anyio.to_thread.run_sync(self.commit_sync, writes)

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            return any(w in text for w in ("locked", "busy", "disk is full", "disk i/o"))
        return False

    async def aclose(self) -> None:
        self.close()

    # ------------------------------------------------------------------ reader side

    def get(self, table: str, doc_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT body FROM documents WHERE tbl = ? AND id = ?", (self._table(table), doc_id)
            ).fetchone()
        return None if row is None else _decode_body(row[0])

    def get_many(self, table: str, doc_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        return [self.get(table, d) for d in doc_ids]

    def query(
        self, table: str, equals: Mapping[str, Any], fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        indexed = {k: v for k, v in equals.items() if k in ("experiment", "phase")}
        sql = "SELECT id, body FROM documents WHERE tbl = ?"
        args: list[Any] = [self._table(table)]
        for k, v in indexed.items():
            sql += f" AND {k} = ?"
            args.append(v)
        with self._lock:
            rows = self._connection().execute(sql, args).fetchall()
        out = []
        for doc_id, body in rows:
            doc = _decode_body(body)
            if all(doc.get(k) == v for k, v in equals.items()):
                if fields is not None:
                    doc = {k: doc[k] for k in fields if k in doc}
                out.append((doc_id, doc))
        return out

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _decode_body(body: bytes) -> dict[str, Any]:
    doc = _codec.decode(body)
    if not isinstance(doc, dict):
        raise CodecError("stored document is not a mapping")
    return doc
