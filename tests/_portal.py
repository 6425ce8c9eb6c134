"""Drive an ``AsyncDataStorer`` from synchronous test code: its writer runs in an
event loop (asyncio or trio) in another thread, through an anyio blocking portal, so
one conformance suite covers ``DataStorer`` and ``AsyncDataStorer`` under both."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from asyncstore import AsyncDataStorer


class PortalStorer:
    def __init__(self, portal: BlockingPortal, metric_config: Any, config: Any) -> None:
        self._portal = portal
        self._store = AsyncDataStorer(metric_config, config)
        self._cm = portal.wrap_async_context_manager(self._store)

    def __enter__(self) -> PortalStorer:
        self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)

    def flush(self, timeout: float | None = None) -> None:
        async def bounded() -> None:
            with anyio.fail_after(timeout):
                await self._store.flush()

        self._portal.call(bounded)

    def close(self, timeout: float | None = None) -> None:
        self.__exit__(None, None, None)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args: self._portal.call(attr, *args)
        return attr


@contextmanager
def storer_factory(kind: str) -> Iterator[Any]:
    """A callable ``(metric_config, config) -> storer`` for ``kind``: "thread"
    (DataStorer), "asyncio" or "trio" (AsyncDataStorer in that kind of loop)."""
    if kind == "thread":
        from asyncstore import DataStorer

        yield DataStorer
        return
    with start_blocking_portal(backend=kind) as portal:
        yield lambda metric_config, config: PortalStorer(portal, metric_config, config)
