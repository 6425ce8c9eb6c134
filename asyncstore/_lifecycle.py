"""What happens to open storers when the process exits, is signalled or forks.

- Exit (``atexit``, and multiprocessing's finalizers, which run where atexit does not):
  every open ``DataStorer`` is closed within ``writer.exit_grace_period``; what could
  not be stored is reported (and, with a spool, left there for ``asyncstore recover``).
- SIGTERM / SIGINT: the same drain, then the signal does what it would have done
  (the previous handler runs, or the default action: exit, or KeyboardInterrupt).
- Fork: the child forgets what its parent queued (the parent writes it) and refuses to
  use the parent's storers.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any

from ._exceptions import StorageError

log = logging.getLogger("asyncstore")

_open: weakref.WeakSet[Any] = weakref.WeakSet()
_hooks_pid = 0
_registry_lock = threading.Lock()
_previous: dict[int, Any] = {}


def track(storer: Any) -> None:
    global _hooks_pid
    with _registry_lock:
        _open.add(storer)
        if _hooks_pid != os.getpid():
            _hooks_pid = os.getpid()
            atexit.register(drain_all)
            # A multiprocessing child ends with os._exit(), skipping atexit; its
            # finalizers still run.
            multiprocessing.util.Finalize(None, drain_all, exitpriority=100)
    _install_signal_handlers()


def untrack(storer: Any) -> None:
    with _registry_lock:
        _open.discard(storer)


def drain_all() -> None:
    for storer in list(_open):
        if storer._pid != os.getpid():
            continue
        grace = storer.config.writer.exit_grace_period
        try:
            _close_showing_progress(storer, grace)
        except TimeoutError:
            journal = storer._journal
            where = (
                f"they remain in the spool: run `asyncstore recover {journal.spool.path}`"
                if journal is not None else "they are lost (set writer.spool_path to keep them)"
            )
            log.error(
                "asyncstore: %d accepted operation(s) could not be stored within the "
                "%.0f s exit grace period; %s (%s)",
                storer._queue.pending, grace, where, storer._writer.stats.last_error,
            )
        except StorageError as exc:
            log.error("asyncstore: at exit: %s", exc)
        except Exception:
            log.exception("asyncstore: draining at exit failed")


def _close_showing_progress(storer: Any, grace: float) -> None:
    """``storer.close(grace)``; a drain longer than a second shows progress on a terminal."""
    if not sys.stderr.isatty():
        storer.close(timeout=grace)
        return
    done = threading.Event()
    start = time.monotonic()

    def show() -> None:
        shown = False
        while not done.wait(0.25):
            if time.monotonic() - start < 1.0:
                continue
            left = storer._queue.pending
            sys.stderr.write(f"\rasyncstore: storing before exit, {left} operation(s) left ")
            sys.stderr.flush()
            shown = True
        if shown:
            sys.stderr.write("\n")

    t = threading.Thread(target=show, name="asyncstore-progress", daemon=True)
    t.start()
    try:
        storer.close(timeout=grace)
    finally:
        done.set()
        t.join(1.0)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; exit still drains
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        _previous[signum] = current
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    log.warning("asyncstore: %s: storing what was accepted before exiting",
                signal.Signals(signum).name)
    drain_all()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # e.g. SIGINT's default: raise KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # exit as the signal asked


def _after_fork_in_child() -> None:
    # The writer thread does not exist in the child: nothing the parent queued may be
    # written from here (the parent writes it), and locks held at fork are reset.
    for storer in list(_open):
        storer._queue.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
