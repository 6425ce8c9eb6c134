"""The document layout of saved models: the model, the registry, the weights.

``models/{experiment}-model``
    ``{"v": 1, "kind": "model", "id", "experiment", "registry_name", "config": <codec
    bytes>, "saved_at", "wandb_artifact", "weights": manifest}``. ``wandb_artifact`` says
    where W&B keeps the model when a W&B sink is configured to (``{"name", "type":
    "model", "alias": "latest", "project", "entity"}``; the W&B worker logs the artifact
    by that name), else None. ``weights`` is there only in a store that
    keeps weights (``save_models``): ``{"format": "asyncstore-codec-1", "bytes",
    "digest": blake2b-256 hex of the payload, "chunks", "ids": [chunk document ids]}``.

``models/{chunk id}``
    ``{"v": 1, "kind": "weights", "model", "digest", "chunk", "chunks", "data"}``: the
    payload (the state dict in the value codec: a map of names to tensors, no pickle)
    cut into pieces of at most :data:`asyncstore._layout.CHUNK_BYTES`, so a model of any
    size stores (Firestore holds 1 MiB per document). The id is a hash of (model id,
    digest, chunk number), then ``-chunk``: not monotonic, the same on a retry, and new
    for new weights, so a reader never mixes chunks of two saves; the manifest is
    written after every chunk.

``model_registry/{registry name}``
    ``{"v": 1, "id", "last_updated", "versions": {key: {"id": model id, "experiment",
    "saved_at"}}}``, merged: each save adds (or rewrites) its own version. The registry
    name is ``model_config["model_name"]`` when given, else the model id (the seed's rule).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from . import _codec
from ._documents import MODEL_REGISTRY, MODELS, Write
from ._exceptions import CodecError
from ._layout import LAYOUT_VERSION, check_id, split_chunks
from ._layout import digest as _digest
from ._sweeps import run_key

WEIGHTS_FORMAT = "asyncstore-codec-1"


def model_id(experiment: str) -> str:
    """The id of the model ``save_model(experiment, ...)`` stores (the seed's)."""
    return f"{experiment}-model"


def state_dict_of(m: Any) -> dict[str, Any]:
    """The state dict of a ``torch.nn.Module`` (or a state dict given as such).

    :raises TypeError: neither, or a name that is not a str.
    """
    get = getattr(m, "state_dict", None)
    if callable(get):
        state = get()
    elif isinstance(m, Mapping):
        state = m
    else:
        raise TypeError(
            f"m must be a torch.nn.Module or a state dict, not {type(m).__name__}"
        )
    if not isinstance(state, Mapping):
        raise TypeError("m.state_dict() did not return a mapping")
    for name in state:
        if not isinstance(name, str):
            raise TypeError(f"state dict names must be str, not {type(name).__name__}")
    return dict(state.items())


def chunk_id(model: str, digest: str, chunk: int) -> str:
    h = hashlib.blake2b(f"{model}\x00{digest}\x00{chunk}".encode(), digest_size=10).hexdigest()
    return f"{h}-{chunk}"


def model_writes(
    experiment: str,
    m: Any,
    model_config: Mapping[str, Any] | None,
    saved_at: datetime | None = None,
    artifact: Mapping[str, Any] | None = None,
) -> list[Write]:
    """Every write of ``save_model``, in commit order: the model and registry documents,
    the weight chunks, the manifest last. The state dict is encoded here, on the
    caller's thread: that copy is what is stored, whatever the model does next.
    ``artifact``: where W&B keeps the model, recorded in the model document.

    :raises TypeError: ``m`` is not a model or state dict, or holds values the codec
        refuses; ``model_config`` is not a dict.
    :raises ValueError: ``model_config["model_name"]`` is not a valid document id.
    """
    if model_config is not None and not isinstance(model_config, Mapping):
        raise TypeError(f"model_config must be a dict, not {type(model_config).__name__}")
    config = dict(model_config or {})
    mid = check_id(model_id(experiment), "model id")
    registry = config.get("model_name") or mid
    check_id(registry, "model_config['model_name']")
    when = saved_at or datetime.now(timezone.utc)
    config_bytes = _codec.encode_snapshot(config)
    payload = _codec.encode_snapshot(state_dict_of(m))

    digest = _digest(payload)
    pieces = split_chunks(payload)
    ids = [chunk_id(mid, digest, k) for k in range(len(pieces))]
    writes = [
        Write(MODELS, mid,
              {"v": LAYOUT_VERSION, "kind": "model", "id": mid, "experiment": experiment,
               "registry_name": registry, "config": config_bytes, "saved_at": when,
               "wandb_artifact": dict(artifact) if artifact is not None else None},
              size=1024 + len(config_bytes)),
        Write(MODEL_REGISTRY, registry,
              {"v": LAYOUT_VERSION, "id": registry, "last_updated": when,
               "versions": {run_key(mid): {"id": mid, "experiment": experiment,
                                           "saved_at": when}}},
              merge=True, size=1024 + 2 * len(mid)),
    ]
    writes += [
        Write(MODELS, ids[k],
              {"v": LAYOUT_VERSION, "kind": "weights", "model": mid, "digest": digest,
               "chunk": k, "chunks": len(pieces), "data": piece},
              size=len(piece) + 300 + len(mid), model_weights=True)
        for k, piece in enumerate(pieces)
    ]
    manifest = {"format": WEIGHTS_FORMAT, "bytes": len(payload), "digest": digest,
                "chunks": len(pieces), "ids": ids}
    writes.append(Write(MODELS, mid, {"weights": manifest}, merge=True,
                        size=512 + 32 * len(ids), model_weights=True))
    return writes


# --------------------------------------------------------------------------- reading


@dataclass
class ModelInfo:
    id: str
    experiment: str | None
    registry_name: str | None
    config: dict[str, Any]
    saved_at: datetime | None
    weights: dict[str, Any] | None  # the manifest, None when this store keeps no weights
    wandb_artifact: dict[str, Any] | None = None  # where W&B keeps it, if it does


def _bad(doc_id: str, why: str) -> CodecError:
    return CodecError(f"document {doc_id!r}: {why}")


def parse_model(doc_id: str, doc: Mapping[str, Any]) -> ModelInfo:
    """:raises CodecError: not an asyncstore model document (a seed document with pickled
    weights is one: it is refused, never unpickled)."""
    if doc.get("v") != LAYOUT_VERSION or doc.get("kind") != "model":
        raise _bad(doc_id, "not an asyncstore model document (pickled weights are never "
                           "loaded)")
    raw = doc.get("config")
    try:
        config = _codec.decode(raw) if isinstance(raw, bytes) else {}
    except CodecError as exc:
        raise _bad(doc_id, f"config: {exc}") from None
    if not isinstance(config, dict):
        raise _bad(doc_id, "config is not a mapping")
    manifest = doc.get("weights")
    if manifest is not None:
        ids = manifest.get("ids") if isinstance(manifest, Mapping) else None
        if (
            not isinstance(manifest, Mapping)
            or manifest.get("format") != WEIGHTS_FORMAT
            or type(manifest.get("bytes")) is not int
            or not isinstance(manifest.get("digest"), str)
            or type(manifest.get("chunks")) is not int
            or not isinstance(ids, list)
            or len(ids) != manifest["chunks"]
            or not all(isinstance(i, str) for i in ids)
        ):
            raise _bad(doc_id, "malformed or unsupported weights manifest")
        manifest = dict(manifest)
    saved_at = doc.get("saved_at")
    return ModelInfo(
        id=doc_id,
        experiment=doc.get("experiment") if isinstance(doc.get("experiment"), str) else None,
        registry_name=doc.get("registry_name")
        if isinstance(doc.get("registry_name"), str) else None,
        config=config,
        saved_at=saved_at if isinstance(saved_at, datetime) else None,
        weights=manifest,
        wandb_artifact=dict(artifact) if isinstance(artifact := doc.get("wandb_artifact"),
                                                    Mapping) else None,
    )


def assemble_weights(
    info: ModelInfo, docs: Sequence[Mapping[str, Any] | None]
) -> OrderedDict[str, Any]:
    """The state dict from the chunk documents named by the manifest, in its order.

    Every chunk is checked (kind, model, digest, number), then the payload's length and
    digest, then it is decoded by the value codec, which executes nothing.

    :raises CodecError: a chunk is missing or malformed, or the payload is not a state
        dict in the codec (a pickle, say).
    """
    manifest = info.weights
    assert manifest is not None
    parts = []
    for k, (cid, doc) in enumerate(zip(manifest["ids"], docs, strict=True)):
        if doc is None:
            raise _bad(cid, f"weights chunk {k} of model {info.id!r} is missing")
        if (
            doc.get("v") != LAYOUT_VERSION
            or doc.get("kind") != "weights"
            or doc.get("model") != info.id
            or doc.get("digest") != manifest["digest"]
            or doc.get("chunk") != k
            or not isinstance(doc.get("data"), bytes)
        ):
            raise _bad(cid, f"not weights chunk {k} of model {info.id!r}")
        parts.append(doc["data"])
    payload = b"".join(parts)
    if len(payload) != manifest["bytes"] or _digest(payload) != manifest["digest"]:
        raise _bad(info.id, "the weights do not match their manifest (length or digest)")
    try:
        state = _codec.decode(payload)
    except CodecError as exc:
        raise _bad(info.id, f"weights: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise _bad(info.id, "weights are not a state dict")
    return OrderedDict(state)
