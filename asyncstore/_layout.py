"""The document layout, shared by every document store and by the fetcher.

``experiments/{experiment}``
    ``{"v": 1, "id", "configs": <codec bytes>, "phases": {phase: {"start_time",
    "end_time", "completed", "resolution", "metrics": [{"name", "comparison"}],
    "best_steps": [{"metric", "best_index", "best_value": <codec bytes>,
    "best_function": comparison name}]}}}``. Written only when an experiment is created
    and when a phase's result is saved, so never more than about once per second.

``batches/{id}``
    A run of consecutive steps of one experiment and phase, as the concatenation of
    their codec records, split into chunks of at most :data:`CHUNK_BYTES` so that no
    document reaches Firestore's 1 MiB (a 12 MB step spans 14 documents):
    ``{"v": 1, "experiment", "phase", "first", "count", "chunk", "chunks", "data"}``.
    The id is a hash of (experiment, phase, first step, step count) and the chunk number: never
    monotonic (no Firestore hotspot), and the same on every retry or replay, so
    writes are idempotent. Readers take each step index once, so even a replay that
    groups steps differently cannot duplicate a step.

A step record is ``{"i": index, "s": start_time, "e": end_time, "r": resolution,
"m": {metric: value}}``; see :mod:`asyncstore._codec` for how values are encoded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import _codec, comparisons
from ._documents import BATCHES, EXPERIMENTS, Write
from ._exceptions import CodecError
from ._results import TrainingResult, TrainingStepResult

LAYOUT_VERSION = 1
CHUNK_BYTES = 900_000
PHASES = ("training", "evaluation")
_RESERVED_ID = re.compile(r"^__.*__$")


def check_id(value: object, what: str = "id") -> str:
    """Refuse, on every store alike, what Firestore cannot hold as a document id.

    :raises TypeError: not a ``str``.
    :raises ValueError: empty, ``.`` or ``..``, holds ``/``, looks like ``__x__``, or
        is over 1,500 bytes.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or value in (".", ".."):
        raise ValueError(f"{what} {value!r} is not a valid document id")
    if "/" in value:
        raise ValueError(f"{what} {value!r} must not contain '/'")
    if _RESERVED_ID.match(value):
        raise ValueError(f"{what} {value!r} is reserved (ids like __x__ are Firestore's)")
    if len(value.encode("utf-8")) > 1500:
        raise ValueError(f"{what} is longer than 1,500 bytes")
    return value


# --------------------------------------------------------------------------- steps


def step_record(index: int, step: TrainingStepResult, saved: Container[str]) -> dict[str, Any]:
    metrics = {k: v for k, v in step.get_metrics().items() if k in saved}
    return {"i": index, "s": step.start_time, "e": step.end_time, "r": step.resolution,
            "m": metrics}


def split_chunks(payload: bytes) -> list[bytes]:
    """``payload`` cut into pieces of at most :data:`CHUNK_BYTES`, each for one document
    (none for an empty payload)."""
    return [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)]


def digest(payload: bytes) -> str:
    """blake2b-256 hex: what a chunked payload is checked against when read back."""
    return hashlib.blake2b(payload, digest_size=32).hexdigest()


def group_id(experiment: str, phase: str, first: int, count: int, chunk: int) -> str:
    digest = hashlib.blake2b(
        f"{experiment}\x00{phase}\x00{first}\x00{count}".encode(), digest_size=10
    ).hexdigest()
    return f"{digest}-{chunk}"


def group_writes(
    experiment: str, phase: str, first: int, count: int, payload: bytes
) -> list[Write]:
    """The documents of one run of steps: at least one, each under 1 MiB."""
    chunks = split_chunks(payload) or [b""]
    return [
        Write(
            BATCHES,
            group_id(experiment, phase, first, count, k),
            {"v": LAYOUT_VERSION, "experiment": experiment, "phase": phase, "first": first,
             "count": count, "chunk": k, "chunks": len(chunks), "data": data},
            size=len(data) + 200 + len(experiment),
        )
        for k, data in enumerate(chunks)
    ]


def _bad(doc_id: str, why: str) -> CodecError:
    return CodecError(f"document {doc_id!r}: {why}")


def assemble_steps(docs: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Step records from batch documents, ordered by index, each index once.

    Groups missing a chunk (a commit still in flight) are left out.

    :raises CodecError: a document is malformed; the error names it.
    """
    # A run is (first, count): a replay that cut runs differently makes other documents,
    # never a mix of old and new chunks.
    groups: dict[tuple[int, int], dict[int, tuple[str, bytes]]] = {}
    expected: dict[tuple[int, int], int] = {}
    for doc_id, doc in docs:
        try:
            first, count, chunk, chunks, data = (
                doc["first"], doc["count"], doc["chunk"], doc["chunks"], doc["data"]
            )
        except (KeyError, TypeError):
            raise _bad(doc_id, "not a batch document") from None
        if doc.get("v") != LAYOUT_VERSION:
            raise _bad(doc_id, f"unsupported layout version {doc.get('v')!r}")
        if not all(type(x) is int for x in (first, count, chunk, chunks)) or not isinstance(
            data, bytes
        ):
            raise _bad(doc_id, "malformed batch fields")
        groups.setdefault((first, count), {})[chunk] = (doc_id, data)
        expected[(first, count)] = chunks
    records: dict[int, dict[str, Any]] = {}
    for (first, count), parts in sorted(groups.items()):
        if len(parts) != expected[(first, count)]:
            continue
        payload = b"".join(parts[k][1] for k in sorted(parts))
        where = parts[min(parts)][0]
        try:
            decoded = list(_codec.iter_decode(payload))
        except CodecError as exc:
            raise _bad(where, str(exc)) from None
        if len(decoded) != count:
            raise _bad(where, f"holds {len(decoded)} steps, says {count}")
        for rec in decoded:
            if (
                not isinstance(rec, dict)
                or type(rec.get("i")) is not int
                or not isinstance(rec.get("m"), dict)
                or not isinstance(rec.get("s"), (datetime, type(None)))
                or not isinstance(rec.get("e"), (datetime, type(None)))
                or type(rec.get("r", 1)) is not int
            ):
                raise _bad(where, "malformed step record")
            records.setdefault(rec["i"], rec)
    return [records[i] for i in sorted(records)]


def step_from_record(rec: Mapping[str, Any]) -> TrainingStepResult:
    step = TrainingStepResult(resolution=rec.get("r", 1))
    for name, value in rec["m"].items():
        step.add_metric(name, value)
    step.start_time = _as_datetime(rec.get("s")) or step.start_time
    step.end_time = _as_datetime(rec.get("e"))
    return step


# --------------------------------------------------------------------------- experiments


# Metric names are user text ("a.b", "__x__", ""): never map keys, which Firestore
# restricts, but values in lists of entries.


def _best_steps(result: TrainingResult) -> list[dict[str, Any]]:
    return [
        {
            "metric": name,
            "best_index": best["best_index"],
            "best_value": _codec.encode_snapshot(best["best_value"]),
            "best_function": comparisons.name_of(best["best_function"]),
        }
        for name, best in result.best_steps.items()
    ]


def experiment_write(result: TrainingResult, phase: str, *, finished: bool) -> Write:
    """The experiment document's part for one phase; merged into what is there."""
    phase_fields: dict[str, Any] = {
        "start_time": result.start_time,
        "resolution": result.resolution,
        "metrics": [
            {"name": n, "comparison": comparisons.name_of(f)} for n, f in result.metrics.items()
        ],
        "completed": finished,
    }
    if finished:
        phase_fields["end_time"] = result.end_time
        phase_fields["best_steps"] = _best_steps(result)
    fields: dict[str, Any] = {"v": LAYOUT_VERSION, "id": result.id, "phases": {phase: phase_fields}}
    if result.configs:  # an evaluation result without configs keeps the experiment's
        fields["configs"] = _codec.encode_snapshot(dict(result.configs))
    return Write(EXPERIMENTS, result.id, fields, merge=True,
                 size=1024 + len(fields.get("configs", b"")))


@dataclass
class PhaseInfo:
    start_time: datetime | None = None
    end_time: datetime | None = None
    completed: bool = False
    resolution: int = 1
    metrics: dict[str, str] = field(default_factory=dict)
    best_steps: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ExperimentInfo:
    id: str
    configs: dict[str, Any]
    phases: dict[str, PhaseInfo]


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, found {type(value).__name__}")
    if type(value) is not datetime:
        # Firestore's DatetimeWithNanoseconds: hand out a plain datetime
        return datetime.fromisoformat(value.isoformat())
    return value


def parse_experiment(doc_id: str, doc: Mapping[str, Any]) -> ExperimentInfo:
    """:raises CodecError: the document is not an asyncstore experiment of this version."""
    # An experiment known only as an HPO trial (save_hpo_step before create_experiment)
    # has no phases yet.
    if doc.get("v") != LAYOUT_VERSION or not isinstance(doc.get("phases", {}), dict):
        raise _bad(doc_id, "not an asyncstore experiment document")
    try:
        configs = _codec.decode(doc["configs"]) if doc.get("configs") is not None else {}
        phases = {}
        for name, p in doc.get("phases", {}).items():
            best = {
                str(b["metric"]): {
                    "best_index": int(b["best_index"]),
                    "best_value": _codec.decode(b["best_value"]),
                    "best_function": str(b["best_function"]),
                }
                for b in (p.get("best_steps") or [])
            }
            phases[name] = PhaseInfo(
                start_time=_as_datetime(p.get("start_time")),
                end_time=_as_datetime(p.get("end_time")),
                completed=bool(p.get("completed", False)),
                resolution=int(p.get("resolution", 1)),
                metrics={str(m["name"]): str(m["comparison"]) for m in p.get("metrics") or []},
                best_steps=best,
            )
    except CodecError as exc:
        raise _bad(doc_id, str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad(doc_id, f"malformed experiment fields ({exc})") from None
    if not isinstance(configs, dict):
        raise _bad(doc_id, "configs is not a mapping")
    return ExperimentInfo(doc_id, configs, phases)
