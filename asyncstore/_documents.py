"""What a document store is: the one small interface between the layout and a backend.

A document is a flat-ish mapping of field names to values that Firestore and the local
store both hold: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, aware
``datetime``, lists of those, and nested ``dict`` s. Every backend module implements
:class:`DocumentStore` (the writer's side) and :class:`DocumentReader` (the fetcher's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# Logical table names; each store maps them through ``table_names`` of its config.
EXPERIMENTS = "experiments"
HPO_RUNS = "hpo_runs"
BATCHES = "batches"
MODELS = "models"
MODEL_REGISTRY = "model_registry"


@dataclass(frozen=True, slots=True)
class Write:
    """Set one document. ``merge`` merges nested maps into what is there (Firestore's
    ``set(..., merge=True)``); otherwise the document is replaced whole. Both are
    idempotent, so a retried commit never duplicates anything."""

    table: str
    doc_id: str
    fields: Mapping[str, Any]
    merge: bool = False
    size: int = field(default=256, compare=False)  # estimated bytes, for sizing commits


class DocumentStore(Protocol):
    """The writer's view of a backend: atomic commits of writes, in order."""

    name: str
    max_commit_bytes: int
    max_commit_writes: int

    async def commit(self, writes: Sequence[Write]) -> None:
        """Apply all ``writes`` atomically.

        :raises Exception: anything; :meth:`is_transient` says whether to retry.
        """

    def is_transient(self, exc: BaseException) -> bool:
        """True when retrying the same commit may succeed."""

    async def aclose(self) -> None: ...


class DocumentReader(Protocol):
    """The fetcher's view of a backend (blocking calls)."""

    def get(self, table: str, doc_id: str) -> dict[str, Any] | None: ...

    def get_many(self, table: str, doc_ids: Sequence[str]) -> list[dict[str, Any] | None]: ...

    def query(
        self, table: str, equals: Mapping[str, Any], fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Documents whose fields equal ``equals``; only ``fields`` of each if given."""

    def close(self) -> None: ...
