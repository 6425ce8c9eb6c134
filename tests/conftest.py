"""Shared pytest fixtures: the Firestore emulator, per-test projects, a fault proxy.

* ``firestore_emulator`` (session): the emulator at ``$FIRESTORE_EMULATOR_HOST`` when
  that is set (``scripts/with_emulator.sh`` / ``make test`` start one), otherwise one
  started here for the session.  Without an emulator the tests that use it skip, or
  fail when ``$CI`` is set.  Has ``.host`` ("127.0.0.1:PORT") and ``.reset(project)``.
* ``firestore_project`` (function): a fresh project id per test, so tests never see
  each other's data; its documents are deleted after the test.
* ``proxy`` (function): a started ``TcpProxy`` in front of the emulator; point the
  client at ``proxy.address`` and use ``pause()`` / ``resume()`` /
  ``kill_connections()`` / ``set_delay()`` to inject faults.

Nothing here sets ``FIRESTORE_EMULATOR_HOST`` in ``os.environ``: tests pass the host
explicitly in their config.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from typing import Protocol

import pytest

# Make the helper modules importable as ``_emulator`` / ``_proxy`` under every
# import mode (prepend, append, importlib) and whether or not tests/ is a package.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _emulator import Emulator, ExternalEmulator, emulator_available  # noqa: E402
from _proxy import TcpProxy  # noqa: E402


class EmulatorHandle(Protocol):
    @property
    def host(self) -> str: ...

    def reset(self, project: str) -> None: ...


@pytest.fixture(scope="session", autouse=True)
def _wandb_files_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Storers whose config leaves W&B on (offline, the default without an API key) write
    their runs and wandb's caches under a temporary folder, never in the checkout or
    the home directory. Tests about W&B set their own folders."""
    root = tmp_path_factory.mktemp("wandb")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR",
                "WANDB_ARTIFACT_DIR"):
        path = root / var.lower()
        path.mkdir()
        os.environ.setdefault(var, str(path))


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[EmulatorHandle]:
    host = os.environ.get("FIRESTORE_EMULATOR_HOST", "").strip()
    if host:
        yield ExternalEmulator(host)
        return
    if not emulator_available():
        if os.environ.get("CI"):
            pytest.fail(
                "Firestore emulator not installed (CI is set): install the Debian package "
                "google-cloud-cli-firestore-emulator (and java), or set "
                "FIRESTORE_EMULATOR_HOST to a running emulator",
                pytrace=False,
            )
        pytest.skip(
            "Firestore emulator not installed; install google-cloud-cli-firestore-emulator"
        )
    emulator = Emulator()
    emulator.start(timeout=90)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def firestore_project(firestore_emulator: EmulatorHandle) -> Iterator[str]:
    project = "test-" + uuid.uuid4().hex[:12]
    yield project
    try:
        firestore_emulator.reset(project)
    except Exception:  # best effort: only frees emulator memory
        pass


@pytest.fixture
def proxy(firestore_emulator: EmulatorHandle) -> Iterator[TcpProxy]:
    target_host, target_port = firestore_emulator.host.rsplit(":", 1)
    p = TcpProxy(target_host.strip("[]"), int(target_port))
    p.start()
    try:
        yield p
    finally:
        p.stop()
