"""A reader for W&B run files (``run-ID.wandb``), which wandb 0.31 cannot read back.

The file is a LevelDB log: a 7-byte header (``b":W&B"``, magic ``0xBEE1`` little-endian,
version 0), then 32 KiB blocks of records. A record is a 7-byte header -- CRC-32 (zlib's)
of the type byte and the data, little-endian; data length, 2 bytes; type: 1 full,
2 first, 3 middle, 4 last -- and its data. A payload that does not fit in a block is cut
into first, middle... last pieces; fewer than 7 bytes left in a block are zero padding.
Each payload is a ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

IDENT = b":W&B"
MAGIC = 0xBEE1
VERSION = 0
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptRunFile(ValueError):
    pass


def _crc(kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


def iter_payloads(data: bytes) -> Iterator[bytes]:
    """The record payloads of a run file's bytes, in order. A torn last record (a writer
    that was killed) ends the iteration.

    :raises CorruptRunFile: not a W&B run file, or a checksum or framing error.
    """
    if len(data) < FILE_HEADER.size:
        raise CorruptRunFile("too short for a W&B run file")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if ident != IDENT or magic != MAGIC or version != VERSION:
        raise CorruptRunFile(f"not a W&B run file (header {data[:7]!r})")
    pos = FILE_HEADER.size
    pending: bytearray | None = None
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER.size:
            pos += left  # the block's zero trailer
            continue
        if pos + RECORD_HEADER.size > len(data):
            return  # torn header
        crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:
            pos += left  # zero-filled rest of a block
            continue
        start, end = pos + RECORD_HEADER.size, pos + RECORD_HEADER.size + length
        if end > len(data):
            return  # torn record
        if length > left - RECORD_HEADER.size:
            raise CorruptRunFile(f"record at {pos} crosses its block")
        piece = data[start:end]
        if _crc(kind, piece) != crc:
            raise CorruptRunFile(f"checksum mismatch in the record at {pos}")
        pos = end
        if kind == FULL and pending is None:
            yield piece
        elif kind == FIRST and pending is None:
            pending = bytearray(piece)
        elif kind == MIDDLE and pending is not None:
            pending += piece
        elif kind == LAST and pending is not None:
            pending += piece
            yield bytes(pending)
            pending = None
        else:
            raise CorruptRunFile(f"record of type {kind} out of sequence at {pos}")


def iter_records(path: str | os.PathLike[str]) -> Iterator[pb.Record]:
    with open(path, "rb") as f:
        data = f.read()
    for payload in iter_payloads(data):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _key(item: Any) -> str | tuple[str, ...]:
    if item.key:
        return str(item.key)
    keys = tuple(item.nested_key)
    return keys[0] if len(keys) == 1 else keys


@dataclass
class RunFile:
    """What a run file holds, folded: rows in order, the last summary and config."""

    run: pb.RunRecord | None = None
    history: list[dict[Any, Any]] = field(default_factory=list)
    summary: dict[Any, Any] = field(default_factory=dict)
    config: dict[Any, Any] = field(default_factory=dict)
    artifacts: list[pb.ArtifactRecord] = field(default_factory=list)
    exited: bool = False
    kinds: dict[str, int] = field(default_factory=dict)


def _fold_config(config: dict[Any, Any], record: pb.ConfigRecord) -> None:
    for item in record.update:
        config[_key(item)] = json.loads(item.value_json)
    for item in record.remove:
        config.pop(_key(item), None)


def read_run(path: str | os.PathLike[str]) -> RunFile:
    out = RunFile()
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        out.kinds[kind] = out.kinds.get(kind, 0) + 1
        if kind == "run":
            out.run = record.run
            _fold_config(out.config, record.run.config)
        elif kind == "config":
            _fold_config(out.config, record.config)
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out.summary[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                out.summary.pop(_key(item), None)
        elif kind == "artifact":
            out.artifacts.append(record.artifact)
        elif kind == "exit":
            out.exited = True
    return out


def run_files(root: str | os.PathLike[str]) -> list[str]:
    """Every ``*.wandb`` file under ``root``, oldest run directory first."""
    found = []
    for dirpath, _, names in os.walk(root):
        found += [os.path.join(dirpath, n) for n in names if n.endswith(".wandb")]
    return sorted(found)
