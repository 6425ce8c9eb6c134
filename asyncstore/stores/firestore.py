"""Google Cloud Firestore, through the real client: the async API for writing, the
blocking one for the fetcher.

Our retry policy (tenacity, in the writer) is the only one: the client's own retries are
switched off, and each commit has a timeout, so a dead network surfaces as
DEADLINE_EXCEEDED and is retried like any other transient error.

A ranked write (``Write.rank``: a trial added to its sweep) is a read-modify-write of a
document many workers share. It commits with optimistic concurrency: the document is
read, the change computed, and the commit made conditional on the document's update time
(``create`` when it did not exist); a concurrent writer makes it fail with
FAILED_PRECONDITION, and it is read and tried again. No lock is held, so there are no
lock waits (the emulator's pessimistic transactions took minutes for 8 contending
workers; this takes a fraction of a second). A commit that touches such a shared
document waits until :attr:`FirestoreStore.hot_interval` has passed since this store
last wrote it (Firestore sustains about one write per second per document); the
trials that arrive meanwhile are merged into the next commit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import sniffio
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from .._documents import (
    Write,
    apply_updates,
    coalesce,
    merge_into,
    plain,
    rank_updates,
    simple_name,
)

if TYPE_CHECKING:
    from .._config import FirestoreDatabaseConfig

# Production allows 10 MiB per request; the emulator rejects over 4 MiB.
EMULATOR_COMMIT_BYTES = 3 * 1024 * 1024 + 512 * 1024
PRODUCTION_COMMIT_BYTES = 9 * 1024 * 1024

# Conditional commits of a shared document retried inside one commit() before the
# contention is reported (as ABORTED, which the writer retries with its back-off).
CONFLICT_ATTEMPTS = 40
_CONFLICT = (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.NotFound)

_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.Aborted,
    gexc.ResourceExhausted,
    gexc.InternalServerError,
    gexc.GatewayTimeout,
    gexc.RetryError,
    asyncio.TimeoutError,
    TimeoutError,
    ConnectionError,
)


def _client_kwargs(cfg: FirestoreDatabaseConfig) -> tuple[dict[str, Any], str | None]:
    host = cfg.resolved_emulator_host
    kwargs: dict[str, Any] = {"project": cfg.project, "database": cfg.database}
    if host is not None:
        kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
    else:
        key_path = cfg.credentials_path()
        if key_path:
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                key_path
            )
            kwargs["credentials"] = creds
            if not cfg.project:
                kwargs["project"] = kwargs["credentials"].project_id
    return kwargs, host


def _with_emulator(client: Any, host: str | None) -> Any:
    # The client reads FIRESTORE_EMULATOR_HOST when it is constructed; setting its
    # attribute instead lets each configured database name its own emulator without
    # touching the process environment. It is read lazily, when the channel is made.
    if host is not None:
        client._emulator_host = host
    return client


class FirestoreStore:
    name = "firestore"
    max_commit_writes = 500

    def __init__(self, cfg: FirestoreDatabaseConfig, *, commit_timeout: float = 30.0) -> None:
        self._cfg = cfg
        self._tables: dict[str, str] = cfg.table_names.model_dump()
        self._kwargs, self._host = _client_kwargs(cfg)
        self.max_commit_bytes = (
            EMULATOR_COMMIT_BYTES if self._host is not None else PRODUCTION_COMMIT_BYTES
        )
        self.commit_timeout = commit_timeout
        self.threaded = False
        self.save_models = cfg.save_models
        # Seconds between two commits of this store to one shared (ranked) document.
        self.hot_interval = 1.0
        self._hot: dict[str, float] = {}  # document path -> monotonic time last written
        self._async: firestore.AsyncClient | None = None
        self._sync: firestore.Client | None = None

    def _table(self, table: str) -> str:
        return self._tables.get(table, table)

    # ------------------------------------------------------------------ writer side

    def prepare(self, writes: Sequence[Write]) -> list[Write]:
        """What this store commits of ``writes``: model weights only with
        ``save_models``, and one write per document where several fold into one."""
        if not self.save_models:
            writes = [w for w in writes if not w.model_weights]
        return coalesce(writes)

    async def commit(self, writes: Sequence[Write]) -> None:
        writes = self.prepare(writes)
        if not writes:
            return
        if self.threaded or sniffio.current_async_library() != "asyncio":
            # In the caller's loop (AsyncDataStorer), and under trio where grpc.aio cannot
            # run, the blocking client commits in a worker thread: building a commit's
            # protobufs holds the GIL for milliseconds, and a worker thread lets the
            # interpreter switch away from it (bench_async: p99 wake-up delay 13 ms with
            # grpc.aio in the loop, 7 ms from a worker thread).
            # Abandoned on cancellation: a commit is idempotent, and a caller's bound on
            # aclose() must not wait out the client's timeout.
            await anyio.to_thread.run_sync(
                self._commit_blocking, writes, abandon_on_cancel=True
            )
            return
        if self._async is None:
            # Made in the writer's event loop: a grpc.aio channel belongs to one loop.
            self._async = _with_emulator(firestore.AsyncClient(**self._kwargs), self._host)
        client = self._async
        if any(w.rank is not None for w in writes):
            await self._commit_ranked(client, writes)
            return
        batch = client.batch()
        for w in writes:
            ref = client.collection(self._table(w.table)).document(w.doc_id)
            batch.set(ref, dict(w.fields), merge=w.merge)
        await batch.commit(retry=None, timeout=self.commit_timeout)

    def _commit_blocking(self, writes: Sequence[Write]) -> None:
        writes = self.prepare(writes)  # idempotent: commit() may have prepared them
        if not writes:
            return
        client = self._client()
        if any(w.rank is not None for w in writes):
            self._commit_ranked_blocking(client, writes)
            return
        batch = client.batch()
        for w in writes:
            ref = client.collection(self._table(w.table)).document(w.doc_id)
            batch.set(ref, dict(w.fields), merge=w.merge)
        batch.commit(retry=None, timeout=self.commit_timeout)

    # ------------------------------------------------------------------ shared documents

    def _refs(self, client: Any, writes: Sequence[Write]) -> list[Any]:
        return [client.collection(self._table(w.table)).document(w.doc_id) for w in writes]

    def _pace(self, refs: Sequence[Any], writes: Sequence[Write]) -> float:
        """Seconds to wait before this commit may write its shared documents again."""
        now = time.monotonic()
        last = max((self._hot.get(r.path, -1e9) for r, w in zip(refs, writes, strict=True)
                    if w.rank is not None), default=-1e9)
        return max(0.0, last + self.hot_interval - now)

    def _written(self, refs: Sequence[Any], writes: Sequence[Write]) -> None:
        now = time.monotonic()
        for r, w in zip(refs, writes, strict=True):
            if w.rank is not None:
                self._hot[r.path] = now

    def _fill(self, client: Any, batch: Any, refs: Sequence[Any], writes: Sequence[Write],
              snaps: Mapping[str, Any]) -> None:
        for ref, w in zip(refs, writes, strict=True):
            if w.rank is None:
                batch.set(ref, dict(w.fields), merge=w.merge)
                continue
            snap = snaps.get(ref.path)
            if snap is None or not snap.exists:
                doc = plain(w.fields)
                batch.create(ref, apply_updates(doc, rank_updates(doc, w.rank)))
                continue
            merged = merge_into(snap.to_dict() or {}, w.fields)
            if not all(simple_name(k) for k in w.fields):
                raise ValueError(f"a ranked write's fields need simple names: {list(w.fields)}")
            updates: dict[str, Any] = {k: merged[k] for k in w.fields}
            for path, value in rank_updates(merged, w.rank).items():
                updates[".".join(path)] = value  # simple names: see _documents.ranking
            batch.update(ref, updates,
                         option=client.write_option(last_update_time=snap.update_time))

    async def _commit_ranked(self, client: Any, writes: Sequence[Write]) -> None:
        refs = self._refs(client, writes)
        wait = self._pace(refs, writes)
        if wait > 0:
            await anyio.sleep(wait)
        shared = [r for r, w in zip(refs, writes, strict=True) if w.rank is not None]
        for attempt in range(CONFLICT_ATTEMPTS):
            snaps = {
                s.reference.path: s
                async for s in client.get_all(shared, retry=None, timeout=self.commit_timeout)
            }
            batch = client.batch()
            self._fill(client, batch, refs, writes, snaps)
            try:
                await batch.commit(retry=None, timeout=self.commit_timeout)
            except _CONFLICT:
                await anyio.sleep(_backoff(attempt))
                continue
            self._written(refs, writes)
            return
        raise _contention(shared)

    def _commit_ranked_blocking(self, client: Any, writes: Sequence[Write]) -> None:
        refs = self._refs(client, writes)
        wait = self._pace(refs, writes)
        if wait > 0:
            time.sleep(wait)
        shared = [r for r, w in zip(refs, writes, strict=True) if w.rank is not None]
        for attempt in range(CONFLICT_ATTEMPTS):
            snaps = {
                s.reference.path: s
                for s in client.get_all(shared, retry=None, timeout=self.commit_timeout)
            }
            batch = client.batch()
            self._fill(client, batch, refs, writes, snaps)
            try:
                batch.commit(retry=None, timeout=self.commit_timeout)
            except _CONFLICT:
                time.sleep(_backoff(attempt))
                continue
            self._written(refs, writes)
            return
        raise _contention(shared)

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, _TRANSIENT)

    async def aclose(self) -> None:
        if self._async is not None:
            client, self._async = self._async, None
            try:
                client.close()  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001, S110 - closing a broken channel must not raise
                pass

    # ------------------------------------------------------------------ reader side

    def _client(self) -> firestore.Client:
        if self._sync is None:
            self._sync = _with_emulator(firestore.Client(**self._kwargs), self._host)
        return self._sync

    def get(self, table: str, doc_id: str) -> dict[str, Any] | None:
        snap = self._client().collection(self._table(table)).document(doc_id).get()
        return snap.to_dict() if snap.exists else None

    def get_many(self, table: str, doc_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        client = self._client()
        refs = [client.collection(self._table(table)).document(d) for d in doc_ids]
        found = {s.id: s.to_dict() for s in client.get_all(refs) if s.exists}
        return [found.get(d) for d in doc_ids]

    def query(
        self, table: str, equals: Mapping[str, Any], fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        q: Any = self._client().collection(self._table(table))
        for k, v in equals.items():
            q = q.where(filter=firestore.FieldFilter(k, "==", v))
        if fields is not None:
            q = q.select(list(fields))
        return [(s.id, s.to_dict() or {}) for s in q.stream()]

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()  # type: ignore[no-untyped-call]
            self._sync = None


def _backoff(attempt: int) -> float:
    return random.uniform(0.0, min(0.5, 0.005 * 2**attempt))  # noqa: S311 - jitter, not crypto


def _contention(refs: Sequence[Any]) -> gexc.Aborted:
    paths = ", ".join(r.path for r in refs)
    return gexc.Aborted(f"too much contention on {paths}; retrying later")  # type: ignore[no-untyped-call]
