"""Google Cloud Firestore, through the real client: the async API for writing, the
blocking one for the fetcher.

Our retry policy (tenacity, in the writer) is the only one: the client's own retries are
switched off, and each commit has a timeout, so a dead network surfaces as
DEADLINE_EXCEEDED and is retried like any other transient error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import sniffio
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from .._documents import Write

if TYPE_CHECKING:
    from .._config import FirestoreDatabaseConfig

# Production allows 10 MiB per request; the emulator rejects over 4 MiB.
EMULATOR_COMMIT_BYTES = 3 * 1024 * 1024 + 512 * 1024
PRODUCTION_COMMIT_BYTES = 9 * 1024 * 1024

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
        self._async: firestore.AsyncClient | None = None
        self._sync: firestore.Client | None = None

    def _table(self, table: str) -> str:
        return self._tables.get(table, table)

    # ------------------------------------------------------------------ writer side

    async def commit(self, writes: Sequence[Write]) -> None:
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
        batch = client.batch()
        for w in writes:
            ref = client.collection(self._table(w.table)).document(w.doc_id)
            batch.set(ref, dict(w.fields), merge=w.merge)
        await batch.commit(retry=None, timeout=self.commit_timeout)

    def _commit_blocking(self, writes: Sequence[Write]) -> None:
        client = self._client()
        batch = client.batch()
        for w in writes:
            ref = client.collection(self._table(w.table)).document(w.doc_id)
            batch.set(ref, dict(w.fields), merge=w.merge)
        batch.commit(retry=None, timeout=self.commit_timeout)

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
