"""Weights & Biases as one more sink of the writer.

Every W&B call runs in a separate worker process (:mod:`asyncstore._wandb_worker`): one
``wandb.log`` of a resolution-2 step costs 0.6-0.8 ms of CPU holding the GIL, which a
thread of the training process would take from a 1 ms training step. This side only
turns the writer's units into events and ships them to the worker in one frame per
commit: the step records as the bytes the caller's thread already encoded, and small
metadata. Sending releases the GIL; the wait for the reply runs in a worker thread, so
the writer's loop and the document stores' lanes never wait on W&B.

A commit returns when the worker has handed every event to wandb (``run.log`` returned;
a run's file is complete when the storer closes). A worker that dies or stops answering
is a transient failure: the commit is retried with a new worker, which resumes the runs
(so a step may be logged twice in an offline file; W&B keeps the first row of a step).
A W&B error is transient when wandb says the network failed, else permanent; either way
only the W&B lane is affected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from ._config import WandbConfig
from ._queue import StepOp, WritesOp
from ._wandb_data import active_run, artifact_name, jsonable
from ._wandb_worker import FrameReader, send_frame
from ._writer import Unit

log = logging.getLogger("asyncstore")

# A commit ships at most about this much (or one bigger unit): at resolution 2 the worker
# logs some 1,000 rows of 10 KB a second, so a commit is about half a second of its work,
# and queue room frees at that pace rather than after one long exchange.
MESSAGE_BYTES = 4 << 20
START_TIMEOUT = 180.0  # a fresh worker imports torch and wandb
REPLY_TIMEOUT = 600.0  # one frame of events (a large model's artifact included)
CLOSE_TIMEOUT = 120.0  # finishing the runs
_MAIN = "import sys; from asyncstore._wandb_worker import main; sys.exit(main(int(sys.argv[1])))"


class WandbError(Exception):
    """A W&B failure, as the worker reported it."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# --------------------------------------------------------------------------- the caller's side


def model_artifact(config: WandbConfig, experiment: str) -> dict[str, Any] | None:
    """Where the W&B sink puts the model of ``experiment`` (recorded in the model
    document), or None when W&B keeps no models."""
    if not config.save_models or config.resolved_mode == "disabled":
        return None
    return {"name": artifact_name(experiment), "type": "model", "alias": "latest",
            "project": config.project_name, "entity": config.entity}


def create_artifact(content: Mapping[str, Any]) -> Any:
    """A ``wandb.Artifact`` (type ``content``) holding ``content`` as ``content.json``,
    named after a digest of it. Runs on the caller's thread: it imports wandb (about a
    second the first time) and writes one small file to wandb's staging directory; it
    makes no network call and logs nothing (log it with ``run.log_artifact``).

    :raises TypeError: ``content`` is not a mapping.
    """
    if not isinstance(content, Mapping):
        raise TypeError(f"content must be a dict, not {type(content).__name__}")
    import wandb

    text = json.dumps(jsonable(content), sort_keys=True)
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    artifact = wandb.Artifact(f"content-{digest}", type="content")
    with artifact.new_file("content.json", mode="w", encoding="utf-8") as f:
        f.write(text)
    return artifact


# --------------------------------------------------------------------------- the sink


@dataclass
class _Event:
    unit: Unit
    body: dict[str, Any]


@dataclass
class Batch:
    events: list[_Event] = field(default_factory=list)
    nbytes: int = 0


class WandbSink:
    """Delivers units to W&B through the worker process.

    ``level`` is 2: it takes every step, whatever ``wandb.data_resolution`` (which sets
    how fine the keys of a row are: 0 model, 1 layer, 2 MAC)."""

    name = "wandb"
    level = 2

    def __init__(self, config: WandbConfig) -> None:
        self.config = config
        mode = config.resolved_mode
        self._worker = _Worker(
            {"project": config.project_name, "entity": config.entity, "dir": config.dir,
             "mode": mode, "resolution": config.data_resolution},
            api_key_env=config.api_key,
            online=mode == "online",
        )
        self._runs: dict[str, str | None] = {}  # experiment -> attach id of the caller's run
        self._eval: dict[str, dict[str, list[float]]] = {}  # evaluation sums, counts
        self._done: weakref.WeakSet[Unit] = weakref.WeakSet()

    def payloads(self, units: Sequence[Unit]) -> list[tuple[Any, list[Unit]]]:
        out: list[tuple[Any, list[Unit]]] = []
        batch = Batch()
        for unit in units:
            if unit in self._done:
                continue
            body = self._event(unit)
            if body is None:
                continue
            size = len(body.get("blob", b"")) + len(body.get("weights", b""))
            if batch.events and batch.nbytes + size > MESSAGE_BYTES:
                out.append((batch, [e.unit for e in batch.events]))
                batch = Batch()
            batch.events.append(_Event(unit, body))
            batch.nbytes += size
        if batch.events:
            out.append((batch, [e.unit for e in batch.events]))
        return out

    def _event(self, unit: Unit) -> dict[str, Any] | None:
        first = unit.ops[0]
        if isinstance(first, StepOp):
            blob = b"".join(op.blob for op in unit.ops if isinstance(op, StepOp) and op.blob)
            return {"k": "steps", "exp": first.experiment, "phase": first.phase,
                    "blob": blob, "run": self._run_of(first.experiment, None)}
        assert isinstance(first, WritesOp)
        x = first.extra
        kind = x.get("event")
        if kind not in ("experiment", "result", "hpo_step", "model"):
            return None
        body = {"k": kind, "exp": x["experiment"], "run": self._run_of(x["experiment"], x)}
        if kind == "model":
            if not self.config.save_models or not x.get("artifact"):
                return None
            chunks = sorted(
                (w.fields["chunk"], w.fields["data"]) for w in unit.writes
                if w.model_weights and w.fields.get("kind") == "weights"
            )
            body.update(weights=b"".join(data for _, data in chunks), config=x["config"],
                        artifact=x["artifact"], registry=x["registry"])
        elif kind == "hpo_step":
            body.update(sweep=x["sweep"], objective=x["objective"], configs=x["configs"],
                        total=x.get("total"))
        else:
            body.update(phase=x.get("phase"), configs=x.get("configs"))
        return body

    def _run_of(self, experiment: str, extra: Mapping[str, Any] | None) -> str | None:
        """The caller's run that ``experiment`` logs to: the one active when its first
        operation was made (the writer's side reads it when that was a step)."""
        if experiment not in self._runs:
            hint = extra.get("wandb_run") if extra is not None else None
            self._runs[experiment] = hint if isinstance(hint, str) else (
                None if extra is not None else active_run()
            )
        return self._runs[experiment]

    async def commit(self, payload: Any) -> None:
        batch: Batch = payload
        todo = [e for e in batch.events if e.unit not in self._done]
        if not todo:
            return
        for e in todo:
            if e.body["k"] == "result" and e.body.get("phase") == "evaluation":
                sums = self._eval.get(e.body["exp"], {})
                e.body["eval"] = {m: list(v) for m, v in sums.items()}
        reply = await anyio.to_thread.run_sync(
            self._worker.exchange, [e.body for e in todo], abandon_on_cancel=True
        )
        for e in todo[: int(reply.get("done", 0))]:
            self._done.add(e.unit)
        for experiment, metrics in (reply.get("eval") or {}).items():
            sums = self._eval.setdefault(experiment, {})
            for metric, (total, count) in metrics.items():
                acc = sums.setdefault(metric, [0.0, 0.0])
                acc[0] += total
                acc[1] += count
        if not reply.get("ok"):
            if reply.get("restart"):
                await anyio.to_thread.run_sync(self._worker.restart, abandon_on_cancel=True)
            raise WandbError(str(reply.get("error")), bool(reply.get("transient")))

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, WandbError) and exc.transient

    async def aclose(self) -> None:
        try:
            await anyio.to_thread.run_sync(
                self._worker.close, CLOSE_TIMEOUT, abandon_on_cancel=True
            )
        except anyio.get_cancelled_exc_class():
            # Cut short (a hung worker, a caller's bound): kill the worker rather than
            # wait; the thread left behind then fails at once on the closed socket.
            self._worker.abort()
            raise


# --------------------------------------------------------------------------- the process


class _Worker:
    """The worker process: started on first use, restarted after a crash."""

    def __init__(self, settings: dict[str, Any], *, api_key_env: str, online: bool) -> None:
        self.settings = settings
        self._api_key_env = api_key_env
        self._online = online
        self._lock = threading.Lock()  # one exchange at a time
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: FrameReader | None = None
        self._service: str | None = None
        self._closed = False

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WANDB_SILENT"] = "true"
        env.setdefault("GOMAXPROCS", "1")  # wandb-core: one OS thread, not one per core
        key = os.environ.get(self._api_key_env)
        if self._online:
            if key and self._api_key_env != "WANDB_API_KEY":
                env["WANDB_API_KEY"] = key
        else:  # offline runs need no key: wandb never sees one it could write down
            env.pop("WANDB_API_KEY", None)
            env.pop(self._api_key_env, None)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        return env

    def _start(self) -> None:
        parent, child = socket.socketpair()
        env = self._env()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
                [sys.executable, "-c", _MAIN, str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env=env,
            )
        except OSError as exc:
            parent.close()
            raise WandbError(f"cannot start the W&B worker: {exc}", transient=True) from exc
        finally:
            child.close()
        self._proc, self._sock, self._reader = proc, parent, FrameReader(parent)
        self._service = env.get("WANDB_SERVICE")
        reply = self._call({"k": "hello", "settings": self.settings}, START_TIMEOUT)
        if not reply.get("ok"):
            self._kill()
            raise WandbError(f"the W&B worker could not start: {reply.get('error')}",
                             bool(reply.get("transient")))

    def _call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        sock, reader, proc = self._sock, self._reader, self._proc
        assert sock is not None and reader is not None and proc is not None
        try:
            sock.settimeout(timeout)
            send_frame(sock, msg)
            sock.settimeout(1.0)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    reply: dict[str, Any] = reader.read()
                    break
                except TimeoutError:
                    if proc.poll() is not None:
                        raise EOFError from None
                    if time.monotonic() > deadline:
                        raise
        except (EOFError, OSError) as exc:
            code = proc.poll()
            self._kill()
            why = (f"exited with code {code}" if code is not None
                   else "did not answer" if isinstance(exc, TimeoutError) else "lost")
            raise WandbError(f"the W&B worker {why}", transient=True) from None
        for level, text in reply.get("logs") or ():
            log.log(int(level), "%s", text)
        return reply

    def exchange(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise WandbError("the W&B sink is closed", transient=False)
            service = os.environ.get("WANDB_SERVICE")
            if (self._proc is not None and service != self._service
                    and any(e.get("run") for e in events)):
                # The caller started wandb after the worker did: attach through its service.
                self._stop(CLOSE_TIMEOUT)
            if self._proc is not None and self._proc.poll() is not None:
                log.warning("the W&B worker exited with code %s; starting a new one",
                            self._proc.returncode)
                self._kill()
            if self._proc is None:
                self._start()
            return self._call({"k": "batch", "events": events}, REPLY_TIMEOUT)

    def _stop(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._call({"k": "close"}, timeout)
                proc.wait(timeout)
        except (WandbError, subprocess.TimeoutExpired):
            log.warning("the W&B worker did not stop in time; killed it")
        self._kill()

    def restart(self) -> None:
        """Stop the worker (finishing its runs); the next exchange starts a new one."""
        with self._lock:
            self._stop(CLOSE_TIMEOUT)

    def close(self, timeout: float) -> None:
        """Finish the runs and stop the worker (killed if it takes over ``timeout``)."""
        locked = self._lock.acquire(timeout=timeout)
        try:
            self._closed = True
            if locked:
                self._stop(timeout)
        finally:
            self._kill()
            if locked:
                self._lock.release()

    def abort(self) -> None:
        """Stop the worker now, from any thread, whatever exchange is in flight."""
        self._closed = True
        self._kill()

    def _kill(self) -> None:
        proc, sock = self._proc, self._sock
        self._proc = self._sock = self._reader = None
        if sock is not None:
            sock.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
