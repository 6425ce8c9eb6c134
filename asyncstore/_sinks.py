"""Sinks: what the writer delivers to. A document sink puts units into a document store
in commits sized to the store's limits (bytes and count)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._documents import DocumentStore, Write
from ._writer import Unit


class DocumentSink:
    def __init__(self, store: DocumentStore, level: int) -> None:
        self.store = store
        self.name = store.name
        self.level = level

    def payloads(self, units: Sequence[Unit]) -> list[tuple[list[Write], list[Unit]]]:
        max_bytes, max_writes = self.store.max_commit_bytes, self.store.max_commit_writes
        out: list[tuple[list[Write], list[Unit]]] = []
        writes: list[Write] = []
        members: list[Unit] = []
        size = 0
        for unit in units:
            for w in unit.writes:
                if writes and (size + w.size > max_bytes or len(writes) >= max_writes):
                    out.append((writes, members))
                    writes, members, size = [], [], 0
                writes.append(w)
                size += w.size
                if not members or members[-1] is not unit:
                    members.append(unit)
        if writes:
            out.append((writes, members))
        return out

    async def commit(self, payload: Any) -> None:
        await self.store.commit(payload)

    def is_transient(self, exc: BaseException) -> bool:
        return self.store.is_transient(exc)

    async def aclose(self) -> None:
        await self.store.aclose()
