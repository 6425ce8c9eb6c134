"""The run-file reader the W&B tests rely on: the LevelDB log framing on synthetic files
(records in one block, across blocks, block trailers, torn tails, corruption), then a
real offline run written by wandb itself, read back value for value."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from ._wandb_reader import (
    BLOCK,
    FILE_HEADER,
    FIRST,
    FULL,
    LAST,
    MIDDLE,
    RECORD_HEADER,
    CorruptRunFile,
    iter_payloads,
    read_run,
    run_files,
)


def write_log(payloads: list[bytes]) -> bytes:
    """A LevelDB log as wandb-core writes one: an independent writer to test the reader."""
    out = bytearray(FILE_HEADER.pack(b":W&B", 0xBEE1, 0))
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < RECORD_HEADER.size:
                out += b"\0" * left
                continue
            room = left - RECORD_HEADER.size
            piece, rest = rest[:room], rest[room:]
            last = not rest
            kind = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF
            out += RECORD_HEADER.pack(crc, len(piece), kind) + piece
            first = False
            if last:
                break
    return bytes(out)


def test_records_in_one_block_across_blocks_and_at_block_ends() -> None:
    payloads = [b"a", b"", b"x" * 100]
    # Fill the first block up to 3 bytes before its end: the next record must skip them.
    used = FILE_HEADER.size + sum(RECORD_HEADER.size + len(p) for p in payloads)
    payloads.append(b"f" * (BLOCK - used - 3 - RECORD_HEADER.size))
    payloads += [b"after the trailer", os.urandom(3 * BLOCK + 17), b"tail"]
    data = write_log(payloads)
    assert data[BLOCK - 3 : BLOCK] == b"\0\0\0"
    assert list(iter_payloads(data)) == payloads


def test_a_torn_last_record_ends_the_file() -> None:
    payloads = [b"one", b"two" * 50, os.urandom(BLOCK + 5)]
    data = write_log(payloads)
    for cut in (len(data) - 1, len(data) - BLOCK // 2, len(write_log(payloads[:2])) + 3):
        assert list(iter_payloads(data[:cut])) == payloads[:2]


def test_corruption_and_foreign_files_are_refused() -> None:
    data = bytearray(write_log([b"hello", b"world"]))
    data[FILE_HEADER.size + RECORD_HEADER.size + 1] ^= 0x01
    with pytest.raises(CorruptRunFile, match="checksum"):
        list(iter_payloads(bytes(data)))
    with pytest.raises(CorruptRunFile, match="not a W&B run file"):
        list(iter_payloads(b"SQLite format 3\0" + b"\0" * 100))
    with pytest.raises(CorruptRunFile, match="too short"):
        list(iter_payloads(b":W&B"))
    # a middle piece with no first piece before it
    crc = zlib.crc32(b"m", zlib.crc32(bytes([MIDDLE]))) & 0xFFFFFFFF
    orphan = FILE_HEADER.pack(b":W&B", 0xBEE1, 0) + struct.pack("<IHB", crc, 1, MIDDLE) + b"m"
    with pytest.raises(CorruptRunFile, match="out of sequence"):
        list(iter_payloads(orphan))


def test_records_parse_as_wandb_records(tmp_path: Path) -> None:
    history = pb.Record()
    item = history.history.item.add()
    item.key, item.value_json = "loss", "0.25"
    nested = history.history.item.add()
    nested.nested_key.append("acc/layer_0")
    nested.value_json = "NaN"
    summary = pb.Record()
    up = summary.summary.update.add()
    up.key, up.value_json = "best", '{"a": [1, 2]}'
    path = tmp_path / "run-x.wandb"
    path.write_bytes(write_log([history.SerializeToString(), summary.SerializeToString()]))
    run = read_run(path)
    assert run.history[0]["loss"] == 0.25 and run.history[0]["acc/layer_0"] != 0.25
    assert run.summary == {"best": {"a": [1, 2]}}
    assert run.kinds == {"history": 1, "summary": 1}


REAL_RUN = """
import wandb
run = wandb.init(project="reader-test", mode="offline", dir=DIR, id="reader-run",
                 config={"lr": 0.5, "layers": [3, 2]}, settings=wandb.Settings(console="off"))
for i in range(40):
    run.log({"loss": 1.0 / (i + 1), "acc/layer_0": i * 0.5, "big": "x" * (i * 1000)}, step=i)
run.summary["final"] = {"ok": True, "n": 40}
art = wandb.Artifact("reader-art", type="dataset")
with art.new_file("data.txt") as f:
    f.write("hello")
run.log_artifact(art)
run.finish()
"""


def run_script(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (wandb's service and globals stay out of
    the test process), with wandb's directories under ``tmp_path``."""
    full_env = dict(os.environ, WANDB_SILENT="true", WANDB_DATA_DIR=str(tmp_path / "data"),
                    WANDB_CACHE_DIR=str(tmp_path / "cache"),
                    WANDB_CONFIG_DIR=str(tmp_path / "config"), **env)
    full_env.pop("WANDB_SERVICE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full_env,
                          capture_output=True, text=True, timeout=240, check=True)


def test_a_real_offline_run_reads_back(tmp_path: Path) -> None:
    run_script(f"DIR = {str(tmp_path)!r}\n" + REAL_RUN, tmp_path)
    [path] = run_files(tmp_path)
    run = read_run(path)
    assert run.run is not None and run.run.run_id == "reader-run"
    assert run.exited
    assert [row["_step"] for row in run.history] == list(range(40))
    for i, row in enumerate(run.history):
        assert row["loss"] == pytest.approx(1.0 / (i + 1))
        assert row["acc/layer_0"] == i * 0.5
        assert row["big"] == "x" * (i * 1000)  # rows up to 39 KB: records over blocks
    assert run.summary["final"] == {"ok": True, "n": 40}
    assert run.summary["loss"] == pytest.approx(1 / 40)
    assert run.config["lr"] == 0.5 and run.config["layers"] == [3, 2]
    [art] = run.artifacts
    assert art.name == "reader-art" and art.type == "dataset"
    assert [c.path for c in art.manifest.contents] == ["data.txt"]
