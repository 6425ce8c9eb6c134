"""The W&B worker: a separate process that makes every W&B call.

Why a process: one ``wandb.log`` of a resolution-2 step (about 100 keys) costs about
0.6-0.8 ms of CPU, nearly all of it holding the GIL. In a thread of the training process
that would stall a 1 ms training step by half; here it costs the training process
nothing. The parent (:class:`asyncstore._wandb.WandbSink`, on the writer's side) only
ships what it already has: the encoded step records and small metadata.

Started as ``python -c "...main(FD)"`` (a fresh interpreter: never a fork of the
threaded parent, never a re-import of the user's ``__main__``), it talks over
the socket ``FD``: length-prefixed frames in the value codec, one request, one reply.

    parent ──► {"k": "hello", "settings"}      ◄── {"ok"}
           ──► {"k": "batch", "events": [...]} ◄── {"ok", "done", "error", "transient",
                                                     "logs", "eval"}
           ──► {"k": "close"}                  ◄── {"ok", "logs"}  (runs finished, exit)

It stops cleanly on ``close``, and on its own when the parent goes away (the socket
closes, or it is re-parented). It never receives the API key through the socket: online,
wandb reads it from the environment the parent gave this process.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Any

from . import _codec

_HEADER = struct.Struct("<Q")


# --------------------------------------------------------------------------- framing


def send_frame(sock: socket.socket, obj: Any) -> None:
    """Send ``obj`` (codec-encodable) as one frame. ``sendall`` releases the GIL while it
    waits."""
    data = _codec.encode_snapshot(obj)
    sock.sendall(_HEADER.pack(len(data)))
    sock.sendall(data)


class FrameReader:
    """Reads frames from ``sock``, keeping a partial frame across timeouts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def read(self) -> Any:
        """The next frame's value.

        :raises EOFError: the other side closed the socket.
        :raises TimeoutError: the socket's timeout passed (call again to go on).
        """
        while True:
            if len(self._buf) >= _HEADER.size:
                (n,) = _HEADER.unpack_from(self._buf)
                if len(self._buf) >= _HEADER.size + n:
                    data = bytes(self._buf[_HEADER.size : _HEADER.size + n])
                    del self._buf[: _HEADER.size + n]
                    return _codec.decode(data)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("the other side closed the connection")
            self._buf += chunk


# --------------------------------------------------------------------------- the process


class _Collect(logging.Handler):
    """Keeps warnings (wandb's included) to send to the parent with the next reply."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append([record.levelno, f"{record.name}: {record.getMessage()}"])
        except Exception:  # noqa: BLE001, S110 - a log line must never break the worker
            pass

    def take(self) -> list[list[Any]]:
        lines = list(self.lines)
        self.lines.clear()  # the same list: the worker appends to it directly
        return lines


def _lower_priority() -> None:
    if os.environ.get("ASYNCSTORE_WRITER_NICE", "1") == "0":
        return
    try:
        os.nice(10)  # the training process wins the CPU; wandb-core inherits this
    except OSError:
        pass


def main(fd: int) -> int:
    import warnings

    warnings.simplefilter("ignore")
    sock = socket.socket(fileno=fd)
    sock.settimeout(1.0)
    reader = FrameReader(sock)
    parent = os.getppid()
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    worker = None

    def receive() -> Any:
        while True:
            try:
                return reader.read()
            except TimeoutError:
                if os.getppid() != parent:  # the parent died: we were re-parented
                    raise EOFError("the parent process is gone") from None

    try:
        hello = receive()
        _lower_priority()
        try:
            from ._wandb_runs import Worker

            worker = Worker(hello["settings"], collect.lines.append)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
            send_frame(sock, {"ok": False, "error": short(exc), "transient": False,
                              "logs": collect.take()})
            return 1
        send_frame(sock, {"ok": True, "logs": collect.take()})
        while True:
            msg = receive()
            if msg.get("k") == "close":
                worker.close()
                worker = None
                send_frame(sock, {"ok": True, "logs": collect.take()})
                return 0
            reply = worker.handle(msg["events"])
            reply["logs"] = collect.take()
            send_frame(sock, reply)
    except (EOFError, OSError):
        return 0  # the parent is gone (or closed the socket): finish the runs and stop
    finally:
        if worker is not None:
            worker.close()


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__

