"""Values too large for the document that holds them, stored beside it.

Every user value in a document is codec bytes (configs, best values, HPO objectives,
model configs). One of them can be a 12 MB tensor, and Firestore holds 1 MiB per field
and per document, so before a write is queued, any bytes value over
:data:`INLINE_MAX` is replaced by a reference, and the bytes go to ``blobs`` documents:

``blobs/{id}``
    ``{"v": 1, "kind": "blob", "digest", "chunk", "chunks", "data"}``, the value cut
    into pieces of at most :data:`asyncstore._layout.CHUNK_BYTES`. The id is a hash of
    (digest, chunk number): content-addressed, so the same value is the same documents
    on every retry, replay or later save.

The reference, in place of the bytes: ``{"blob_ref": {"digest", "bytes", "chunks"}}``
(blake2b-256 hex of the value). The chunk writes come before the write that names
them, so a reader never meets a reference whose chunks are not stored.

The threshold is small enough that a document merged from many writes (an experiment's
phases, best steps and HPO entry) stays far below 1 MiB: each inline value is at most
16 KiB. Step batches and model weights are chunked already and are left alone.

Readers see none of this: :class:`ResolvingReader` puts the bytes back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ._documents import BATCHES, BLOBS, DocumentReader, Write
from ._exceptions import CodecError
from ._layout import CHUNK_BYTES, LAYOUT_VERSION, split_chunks
from ._layout import digest as _digest

INLINE_MAX = 16 * 1024
REF = "blob_ref"


def blob_id(digest: str, chunk: int) -> str:
    h = hashlib.blake2b(f"blob\x00{digest}\x00{chunk}".encode(), digest_size=10).hexdigest()
    return f"{h}-{chunk}"


def _keeps_inline(w: Write) -> bool:
    return w.table in (BATCHES, BLOBS) or w.model_weights


def _swap(value: Any, out: list[Write]) -> Any:
    """``value`` with every large bytes value replaced by a reference; the chunk
    writes of those values appended to ``out``."""
    if isinstance(value, bytes) and len(value) > INLINE_MAX:
        digest = _digest(value)
        pieces = split_chunks(value)
        out.extend(
            Write(BLOBS, blob_id(digest, k),
                  {"v": LAYOUT_VERSION, "kind": "blob", "digest": digest, "chunk": k,
                   "chunks": len(pieces), "data": piece},
                  size=len(piece) + 300)
            for k, piece in enumerate(pieces)
        )
        return {REF: {"digest": digest, "bytes": len(value), "chunks": len(pieces)}}
    if isinstance(value, Mapping):
        return {k: _swap(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, out) for v in value]
    return value


def _inline_bytes(value: Any) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, Mapping):
        return sum(len(k) + _inline_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_inline_bytes(v) for v in value)
    return 8


def externalize(writes: Sequence[Write]) -> list[Write]:
    """``writes`` with their large values moved to blob documents, each blob's chunks
    just before the write that refers to it. Sizes are re-estimated from the fields."""
    out: list[Write] = []
    for w in writes:
        if _keeps_inline(w):
            out.append(w)
            continue
        chunks: list[Write] = []
        fields = _swap(w.fields, chunks)
        if chunks:
            out.extend(chunks)
            w = replace(w, fields=fields)
        out.append(replace(w, size=max(w.size, 512 + _inline_bytes(w.fields))))
    return out


# --------------------------------------------------------------------------- reading


def _refs(value: Any, found: list[Mapping[str, Any]]) -> None:
    if isinstance(value, Mapping):
        ref = value.get(REF)
        if len(value) == 1 and isinstance(ref, Mapping):
            found.append(ref)
            return
        for v in value.values():
            _refs(v, found)
    elif isinstance(value, list):
        for v in value:
            _refs(v, found)


def _put_back(value: Any, blobs: Mapping[str, bytes]) -> Any:
    if isinstance(value, Mapping):
        ref = value.get(REF)
        if len(value) == 1 and isinstance(ref, Mapping):
            return blobs[ref["digest"]]
        return {k: _put_back(v, blobs) for k, v in value.items()}
    if isinstance(value, list):
        return [_put_back(v, blobs) for v in value]
    return value


def _check_ref(doc_id: str, ref: Mapping[str, Any]) -> tuple[str, int, int]:
    digest, size, chunks = ref.get("digest"), ref.get("bytes"), ref.get("chunks")
    if not isinstance(digest, str) or type(size) is not int or type(chunks) is not int \
            or not 0 < chunks <= 1 + size // CHUNK_BYTES:
        raise CodecError(f"document {doc_id!r}: malformed blob reference")
    return digest, size, chunks


class ResolvingReader:
    """A :class:`DocumentReader` that hands out documents with their blob references
    replaced by the bytes they stand for, as they were written."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def _resolve(self, table: str, docs: list[tuple[str, dict[str, Any] | None]]) -> None:
        if table in (BATCHES, BLOBS):
            return
        wanted: dict[str, tuple[str, int, int]] = {}
        for doc_id, doc in docs:
            found: list[Mapping[str, Any]] = []
            _refs(doc, found)
            for ref in found:
                digest, size, chunks = _check_ref(doc_id, ref)
                wanted[digest] = (doc_id, size, chunks)
        if not wanted:
            return
        blobs = {digest: self._load(digest, *where) for digest, where in wanted.items()}
        for i, (doc_id, doc) in enumerate(docs):
            if doc is not None:
                docs[i] = (doc_id, _put_back(doc, blobs))

    def _load(self, digest: str, doc_id: str, size: int, chunks: int) -> bytes:
        ids = [blob_id(digest, k) for k in range(chunks)]
        parts = []
        for k, (cid, doc) in enumerate(zip(ids, self._reader.get_many(BLOBS, ids),
                                           strict=True)):
            if doc is None or doc.get("kind") != "blob" or doc.get("digest") != digest \
                    or doc.get("chunk") != k or not isinstance(doc.get("data"), bytes):
                raise CodecError(
                    f"document {doc_id!r}: part {k} of a large value ({cid!r}) is missing "
                    "or malformed"
                )
            parts.append(doc["data"])
        data = b"".join(parts)
        if len(data) != size or _digest(data) != digest:
            raise CodecError(f"document {doc_id!r}: a large value does not match its digest")
        return data

    def get(self, table: str, doc_id: str) -> dict[str, Any] | None:
        docs = [(doc_id, self._reader.get(table, doc_id))]
        self._resolve(table, docs)
        return docs[0][1]

    def get_many(self, table: str, doc_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        docs = list(zip(doc_ids, self._reader.get_many(table, doc_ids), strict=True))
        self._resolve(table, docs)
        return [doc for _, doc in docs]

    def query(
        self, table: str, equals: Mapping[str, Any], fields: Sequence[str] | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        docs: list[tuple[str, dict[str, Any] | None]] = list(
            self._reader.query(table, equals, fields)
        )
        self._resolve(table, docs)
        return [(doc_id, doc) for doc_id, doc in docs if doc is not None]

    def close(self) -> None:
        self._reader.close()
