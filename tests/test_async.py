"""AsyncDataStorer in the caller's event loop, under asyncio and trio."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from asyncstore import AsyncDataStorer, DataFetcher, TrainingResult, TrainingStepResult

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def local_config(tmp_path: Any, **writer: Any) -> dict[str, Any]:
    return {"wandb": {"mode": "disabled"},
            "database": {"write_databases": [{"name": "local", "path": str(tmp_path / "a.db")}]},
            "writer": {"flush_interval": 0.05, **writer}}


def firestore_config(host: str, project: str, **writer: Any) -> dict[str, Any]:
    return {"wandb": {"mode": "disabled"},
            "database": {"read_database": "firestore",
                         "write_databases": [{"name": "firestore", "project": project,
                                              "emulator_host": host}]},
            "writer": {"flush_interval": 0.05, **writer}}


def step(value: Any) -> TrainingStepResult:
    s = TrainingStepResult()
    s.add_metric("x", value)
    return s


X = [{"name": "x", "save": True}]


@pytest.fixture(params=["local", "firestore"])
def store_config(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if request.param == "local":
        return local_config(tmp_path)
    emulator = request.getfixturevalue("firestore_emulator")
    return firestore_config(emulator.host, request.getfixturevalue("firestore_project"))


async def test_fifty_concurrent_tasks_each_store_their_own_experiment_exactly(store_config):
    async def trial(store: AsyncDataStorer, k: int) -> None:
        await store.create_experiment(TrainingResult(f"task-{k}"))
        for i in range(200):
            await store.save_training_step(f"task-{k}", step([k, i, [i / 3]]))
            if i % 20 == 0:
                await anyio.sleep(0)  # interleave the tasks

    async with AsyncDataStorer(X, store_config) as store:
        async with anyio.create_task_group() as tg:
            for k in range(50):
                tg.start_soon(trial, store, k)
    assert store.stats().written == 50 * 201 and store.stats().failed == 0
    fetcher = DataFetcher(store_config)
    for k in range(50):
        steps = await anyio.to_thread.run_sync(fetcher.get_training_result, f"task-{k}")
        assert [s.get_metric("x") for s in steps.get_steps()] == [
            [k, i, [i / 3]] for i in range(200)
        ]


async def test_methods_outside_async_with_are_a_clear_error(tmp_path):
    store = AsyncDataStorer(X, local_config(tmp_path))
    with pytest.raises(RuntimeError, match="async with"):
        await store.save_training_step("e", step(1))
    async with store:
        await store.save_training_step("e", step(1))
    with pytest.raises(RuntimeError, match="closed"):
        await store.save_training_step("e", step(2))
    with pytest.raises(RuntimeError):
        async with store:
            pass
    await store.aclose()  # idempotent


async def test_cancelling_the_owner_task_stores_everything_accepted_and_does_not_hang(tmp_path):
    cfg = local_config(tmp_path)
    accepted = 0
    with anyio.move_on_after(0.5) as scope:
        async with AsyncDataStorer(X, cfg) as store:
            while True:
                await store.save_training_step("cancelled", step(accepted))
                accepted += 1
                if accepted % 50 == 0:
                    await anyio.sleep(0.001)
    assert scope.cancelled_caught and accepted > 100
    assert store.stats().accepted == accepted and store.stats().pending == 0
    got = DataFetcher(cfg).get_training_result("cancelled").get_steps()
    assert [s.get_metric("x") for s in got] == list(range(accepted))


async def test_cancellation_is_not_swallowed(tmp_path):
    with anyio.CancelScope() as scope:
        async with AsyncDataStorer(X, local_config(tmp_path)) as store:
            await store.save_training_step("e", step(1))
            scope.cancel()
            await anyio.sleep(10)  # a checkpoint: cancelled here
            pytest.fail("cancellation was swallowed")
    assert scope.cancelled_caught
    assert store.stats().written == 1


async def test_aclose_is_bounded_by_the_caller_when_the_store_is_gone(
    proxy, firestore_project, caplog
):
    cfg = firestore_config(proxy.address, firestore_project,
                           retry={"attempts": 1000, "initial": 0.05, "max_wait": 0.2})
    async with AsyncDataStorer(X, cfg) as store:
        await store.save_training_step("gone", step(0))
        await store.flush()
        proxy.pause()
        for i in range(1, 20):
            await store.save_training_step("gone", step(i))
        start = time.monotonic()
        with anyio.move_on_after(1.0) as scope:
            await store.aclose()
        assert scope.cancelled_caught
    took = time.monotonic() - start
    assert took < 15, took
    assert store.stats().pending == 19
    assert "19 accepted operation(s) were not stored" in caplog.text


async def test_a_cancelled_wait_for_room_takes_no_step_number(proxy, firestore_project,
                                                              firestore_emulator):
    cfg = firestore_config(proxy.address, firestore_project, queue_size=5)
    async with AsyncDataStorer(X, cfg) as store:
        await store.save_training_step("room", step(0))
        await store.flush()
        proxy.pause()
        for i in range(1, 6):
            await store.save_training_step("room", step(i))
        with anyio.move_on_after(0.3) as scope:
            await store.save_training_step("room", step("never"))
        assert scope.cancelled_caught  # it waited for room, then was cancelled
        proxy.resume()
        await store.save_training_step("room", step(6))
    got = DataFetcher(firestore_config(firestore_emulator.host, firestore_project))
    steps = got.get_training_result("room").get_steps()
    assert [s.get_metric("x") for s in steps] == list(range(7))


async def test_the_loop_stays_responsive_while_the_writer_commits_a_backlog(
    firestore_emulator, firestore_project
):
    cfg = firestore_config(firestore_emulator.host, firestore_project, queue_size=20_000)
    payload = [list(range(100)) for _ in range(10)]  # a few KB a step
    worst = 0.0
    async with AsyncDataStorer(X, cfg) as store:
        for i in range(5000):
            await store.save_training_step("backlog", step(payload))
        done = False

        async def probe() -> None:
            nonlocal worst
            while not done:
                t0 = time.perf_counter()
                await anyio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t0 - 0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            await store.flush()
            done = True
    # A generous bound for a noisy 2-core machine; benchmarks/bench_async.py prints it.
    assert worst < 0.25, f"the loop stalled {worst * 1e3:.0f} ms"


async def test_experiment_session_creates_on_entry_and_saves_the_result_on_exit(tmp_path):
    cfg = local_config(tmp_path)
    result = TrainingResult("session", metrics={"x": "max_by_layerwise_mean"})
    async with AsyncDataStorer(X, cfg) as store:
        async with store.experiment(result) as run:
            for i in range(5):
                s = step(float(i % 3))
                run.add_step(s)
                await store.save_training_step(run.id, s)
    got = DataFetcher(cfg).get_training_result("session")
    assert got.end_time == result.end_time is not None
    assert got.best_steps["x"]["best_index"] == 2
    assert len(got.get_steps()) == 5


async def test_a_task_that_only_awaits_saves_lets_the_loops_other_tasks_run(tmp_path):
    """No sleep in the saving loop: the saves themselves checkpoint now and then (as
    trio asks of every async call), so the loop's other tasks (the writer among them)
    keep running; before, they ran only once the queue was full."""
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            beats += 1
            await anyio.sleep(0)

    async with AsyncDataStorer(X, local_config(tmp_path, queue_size=1_000_000)) as store:
        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            await anyio.sleep(0)
            beats = 0
            start = time.monotonic()
            i = 0
            while time.monotonic() - start < 0.5:
                await store.save_training_step("busy", step(i))
                i += 1
            tg.cancel_scope.cancel()
    assert beats >= i // 64 - 1 > 0, (beats, i)
    got = DataFetcher(local_config(tmp_path)).get_training_result("busy").get_steps()
    assert [s.get_metric("x") for s in got] == list(range(i))
