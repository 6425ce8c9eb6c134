"""What a document store is: the one small interface between the layout and a backend.

A document is a flat-ish mapping of field names to values that Firestore and the local
store both hold: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, aware
``datetime``, lists of those, and nested ``dict`` s. Every backend module implements
:class:`DocumentStore` (the writer's side) and :class:`DocumentReader` (the fetcher's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# Logical table names; each store maps them through ``table_names`` of its config.
EXPERIMENTS = "experiments"
HPO_RUNS = "hpo_runs"
BATCHES = "batches"
MODELS = "models"
MODEL_REGISTRY = "model_registry"
BLOBS = "blobs"  # values too large for their document (see _blobs.py)


@dataclass(frozen=True, slots=True)
class Write:
    """Set one document. ``merge`` merges nested maps into what is there (Firestore's
    ``set(..., merge=True)``); otherwise the document is replaced whole. Both are
    idempotent, so a retried commit never duplicates anything.

    ``rank`` (see :func:`ranking`) makes the write an atomic read-modify-write of a
    shared document: after ``fields`` are merged, entries are added to a map and the best
    entry is recomputed from the whole map, in one step that no concurrent writer can
    interleave (Firestore: a commit guarded by the document's update time, retried on
    conflict; SQLite: inside ``BEGIN IMMEDIATE``). A ranked write always merges.

    ``model_weights`` marks model weight documents, which only stores with
    ``save_models`` on keep; the others leave such writes out.
    """

    table: str
    doc_id: str
    fields: Mapping[str, Any]
    merge: bool = False
    size: int = field(default=256, compare=False)  # estimated bytes, for sizing commits
    rank: Mapping[str, Any] | None = None
    model_weights: bool = False


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


# --------------------------------------------------------------------------- ranked maps
#
# A ranking is plain data (it travels through the spool like any write):
#   {"field": map field, "entries": {key: {label: str, score: float | None, ...}},
#    "score": entry field ranked (higher is better), "label": entry field naming it,
#    "best": field that gets the best entry's label, "best_score": field for its score,
#    "order": field that gets every label ordered best first, or None}
# Applied to a document, new keys get "n", the map's size when they arrived (a dense
# arrival order; an existing key keeps its n, so a replay changes nothing). The best is
# the highest score over the whole map; missing, NaN and -inf scores never rank; ties go
# to the earliest arrival. That is HPOResult's rule, so stored and fetched bests agree.


def ranking(
    field: str,
    entries: Mapping[str, Mapping[str, Any]],
    *,
    score: str = "total",
    label: str = "id",
    best: str = "best_run_id",
    best_score: str = "best_total",
    order: str | None = None,
) -> dict[str, Any]:
    """The ``rank`` of a :class:`Write`. Map keys and field names must be simple
    (``[A-Za-z_][A-Za-z0-9_]*``): they become Firestore field paths unquoted."""
    for name in (field, score, label, best, best_score, order, *entries):
        if name is not None and not _simple(name):
            raise ValueError(f"{name!r} is not a simple field name")
    return {"field": field, "entries": {k: dict(v) for k, v in entries.items()},
            "score": score, "label": label, "best": best, "best_score": best_score,
            "order": order}


def simple_name(name: str) -> bool:
    """A Firestore field name that needs no quoting in a field path."""
    return _simple(name)


def _simple(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and all(
        c.isascii() and (c.isalnum() or c == "_") for c in name
    )


def _rank_score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return None if math.isnan(f) or f == -math.inf else f


def rank_order(runs: Mapping[str, Mapping[str, Any]], score: str) -> list[str]:
    """The keys of ``runs``, best first: by score (unranked last), then by arrival ``n``."""
    def key(k: str) -> tuple[int, float, int]:
        s = _rank_score(runs[k].get(score))
        n = runs[k].get("n")
        return (0 if s is not None else 1, -(s or 0.0), n if type(n) is int else 1 << 62)

    return sorted(runs, key=key)


def rank_updates(doc: Mapping[str, Any], rank: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """What applying ``rank`` to a document holding ``doc`` changes: field paths (a
    top-level field, or (map field, key)) to their new values."""
    field_name: str = rank["field"]
    current = doc.get(field_name)
    runs: dict[str, dict[str, Any]] = (
        {k: dict(v) for k, v in current.items() if isinstance(v, Mapping)}
        if isinstance(current, Mapping) else {}
    )
    changed: dict[str, dict[str, Any]] = {}
    for key, entry in rank["entries"].items():
        old = runs.get(key)
        n = old.get("n") if old is not None else None
        new = {**entry, "n": n if type(n) is int else len(runs)}
        runs[key] = changed[key] = new
    updates: dict[tuple[str, ...], Any] = {}
    if not isinstance(current, Mapping):
        updates[(field_name,)] = runs
    else:
        for key, entry in changed.items():
            updates[(field_name, key)] = entry
    order = rank_order(runs, rank["score"])
    top = runs[order[0]] if order else None
    best_score = _rank_score(top.get(rank["score"])) if top is not None else None
    if top is None or best_score is None:
        updates[(rank["best"],)] = None
        updates[(rank["best_score"],)] = None
    else:
        updates[(rank["best"],)] = top.get(rank["label"])
        updates[(rank["best_score"],)] = best_score
    if rank.get("order"):
        updates[(rank["order"],)] = [runs[k].get(rank["label"]) for k in order]
    return updates


def apply_updates(doc: dict[str, Any], updates: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """Set each path of ``updates`` in ``doc`` (in place; returns it)."""
    for path, value in updates.items():
        target = doc
        for part in path[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        target[path[-1]] = value
    return doc


# --------------------------------------------------------------------------- merging


def merge_into(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Firestore's ``set(merge=True)``: non-empty nested maps merge, everything else
    (an empty map included) replaces."""
    for key, value in update.items():
        if isinstance(value, Mapping) and value and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = plain(value)
    return base


def plain(value: Any) -> Any:
    """``value`` with every mapping copied into a plain ``dict``."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def _has_empty_map(fields: Mapping[str, Any]) -> bool:
    return any(
        isinstance(v, Mapping) and (not v or _has_empty_map(v)) for v in fields.values()
    )


def coalesce(writes: Sequence[Write]) -> list[Write]:
    """Fold the writes of one commit that go to the same document into one write each,
    where that means the same: a merge folds into the previous write to its document
    (the result keeps that write's place). Several trials of one sweep in a commit so
    become one write of the sweep document: a shared document's sustained write rate
    counts commits, not trials."""
    out: list[Write] = []
    last: dict[tuple[str, str], int] = {}
    for w in writes:
        key = (w.table, w.doc_id)
        i = last.get(key)
        p = out[i] if i is not None else None
        if (
            i is None
            or p is None
            or not w.merge
            or _has_empty_map(p.fields)
            or (w.rank is not None and not p.merge)
            or (p.rank is not None and w.rank is not None and not _same_rank(p.rank, w.rank))
            or p.model_weights != w.model_weights
        ):
            last[key] = len(out)
            out.append(w)
            continue
        rank = p.rank if w.rank is None else w.rank if p.rank is None else {
            **p.rank,
            "entries": {**p.rank["entries"], **w.rank["entries"]},
            "order": p.rank.get("order") or w.rank.get("order"),
        }
        out[i] = replace(
            p, fields=merge_into(plain(p.fields), w.fields), size=p.size + w.size, rank=rank
        )
    return out


def _same_rank(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("field", "score", "label", "best", "best_score")
    return all(a.get(k) == b.get(k) for k in keys)
