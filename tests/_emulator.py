"""Start, reset and stop a local Firestore emulator for the tests.

The emulator is ``gcloud emulators firestore start`` (Debian package
``google-cloud-cli-firestore-emulator``, needs java).  It runs offline.  gcloud
starts a shell script which starts java, so the emulator is started in its own
session / process group and the whole group is killed on ``stop()``.

Each gcloud invocation gets its own throw-away ``CLOUDSDK_CONFIG`` directory so
that concurrent emulators (other test runs, other engineers) never race on
``~/.config/gcloud/emulators/firestore/env.yaml``.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from types import TracebackType

READY_LINE = "Dev App Server is now running"
_COMPONENT_DIR = os.path.join("platform", "cloud-firestore-emulator")
_DEFAULT_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
_MAX_LOG_LINES = 500


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sdk_roots() -> list[str]:
    roots: list[str] = []
    env_root = os.environ.get("CLOUDSDK_ROOT_DIR")
    if env_root:
        roots.append(env_root)
    gcloud = shutil.which("gcloud")
    if gcloud:
        # <root>/bin/gcloud, usually reached through a symlink in /usr/bin.
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(gcloud))))
    roots.extend(_DEFAULT_SDK_ROOTS)
    return roots


def emulator_available() -> bool:
    """True when gcloud and its Firestore emulator component (and java) are installed."""
    if shutil.which("gcloud") is None or shutil.which("java") is None:
        return False
    return any(os.path.isdir(os.path.join(root, _COMPONENT_DIR)) for root in _sdk_roots())


def reset_emulator(host: str, project: str, timeout: float = 10.0) -> None:
    """Delete every document of ``project`` in the emulator at ``host`` ("h:port")."""
    quoted = urllib.parse.quote(project, safe="")
    url = f"http://{host}/emulator/v1/projects/{quoted}/databases/(default)/documents"
    req = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        resp.read()
        if resp.status >= 300:  # pragma: no cover - urlopen raises for most
            raise RuntimeError(f"emulator reset of {project!r} failed: HTTP {resp.status}")


class ExternalEmulator:
    """An emulator someone else runs (e.g. FIRESTORE_EMULATOR_HOST); never stopped here."""

    def __init__(self, host: str) -> None:
        self._host = host

    @property
    def host(self) -> str:
        return self._host

    def reset(self, project: str) -> None:
        reset_emulator(self._host, project)

    def stop(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ExternalEmulator({self._host!r})"


class Emulator:
    """A Firestore emulator process on 127.0.0.1:<free port>."""

    def __init__(self, port: int | None = None, gcloud: str = "gcloud") -> None:
        self._requested_port = port
        self._gcloud = gcloud
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._eof = threading.Event()
        self._lines: collections.deque[str] = collections.deque(maxlen=_MAX_LOG_LINES)
        self._lines_lock = threading.Lock()
        self._config_dir: str | None = None
        self._lock = threading.Lock()

    # -- properties -------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def output(self) -> str:
        """The last lines the emulator printed (bounded)."""
        with self._lines_lock:
            return "".join(self._lines)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "Emulator":
        """Start the emulator and wait until it serves; RuntimeError on failure."""
        with self._lock:
            if self._proc is not None:
                raise RuntimeError("emulator already started")
            attempts = 1 if self._requested_port is not None else 3
            deadline = time.monotonic() + timeout
            last_error: RuntimeError | None = None
            for _ in range(attempts):
                try:
                    self._start_once(max(1.0, deadline - time.monotonic()))
                    return self
                except RuntimeError as exc:
                    last_error = exc
                    out = self.output().lower()
                    self._stop_locked()
                    # Retry only a lost race for the port.
                    if "address already in use" not in out and "bindexception" not in out:
                        break
                    if time.monotonic() >= deadline:
                        break
            assert last_error is not None
            raise last_error

    def _start_once(self, timeout: float) -> None:
        self._port = self._requested_port or free_port()
        self._ready.clear()
        self._eof.clear()
        with self._lines_lock:
            self._lines.clear()
        self._config_dir = tempfile.mkdtemp(prefix="asyncstore-gcloud-")
        env = dict(os.environ)
        env.pop("FIRESTORE_EMULATOR_HOST", None)
        env.update(
            CLOUDSDK_CONFIG=self._config_dir,
            CLOUDSDK_CORE_DISABLE_PROMPTS="1",
            CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="1",
            CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        )
        cmd = [
            self._gcloud,
            "emulators",
            "firestore",
            "start",
            f"--host-port=127.0.0.1:{self._port}",
        ]
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise RuntimeError(f"could not run {self._gcloud!r}: {exc}") from exc
        self._reader = threading.Thread(
            target=self._read_output, name=f"firestore-emulator-{self._port}", daemon=True
        )
        self._reader.start()

        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._eof.is_set() or self._proc.poll() is not None:
                # Give the reader a moment to collect the last lines.
                self._eof.wait(1.0)
                if self._ready.is_set():
                    break
                raise RuntimeError(
                    f"Firestore emulator exited before it was ready "
                    f"(exit code {self._proc.poll()}); output:\n{self.output()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"Firestore emulator not ready after {timeout:.0f} s; output:\n{self.output()}"
                )
            self._ready.wait(min(0.2, remaining))

    def _read_output(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                with self._lines_lock:
                    self._lines.append(line)
                if READY_LINE in line:
                    self._ready.set()
        except (OSError, ValueError):
            pass
        finally:
            self._eof.set()

    def stop(self) -> None:
        """Kill the emulator's whole process group; safe to call more than once."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: the pid is the group id
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and _group_alive(pgid):
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed above
                pass
            if self._reader is not None:
                self._reader.join(timeout=5.0)
            if proc.stdout is not None:
                try:
                    proc.stdout.close()
                except OSError:
                    pass
        self._reader = None
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None

    # -- data -------------------------------------------------------------------------
    def reset(self, project: str) -> None:
        """Delete all documents of ``project``."""
        reset_emulator(self.host, project)

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> "Emulator":
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Emulator(port={self._port}, running={self.running})"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True
