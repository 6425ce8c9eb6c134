"""Firestore goes away (a real TCP proxy in front of the emulator stops forwarding, or
cuts every connection): the training side never waits, and nothing is lost or doubled."""

from __future__ import annotations

import threading
import time

import pytest

from asyncstore import DataFetcher, DataStorer, TrainingResult, TrainingStepResult

from ._data import physical_step_count


def config(address: str, project: str, queue_size: int = 20_000) -> dict:
    return {
        "wandb": {"mode": "disabled"},
        "database": {
            "read_database": "firestore",
            "write_databases": [
                {"name": "firestore", "project": project, "emulator_host": address}
            ],
        },
        "writer": {"queue_size": queue_size, "flush_interval": 0.05,
                   "retry": {"attempts": 100, "initial": 0.05, "max_wait": 0.5}},
    }


def step(i: int) -> TrainingStepResult:
    s = TrainingStepResult()
    s.add_metric("x", [i, [i / 7, float(i)]])
    return s


def test_saves_never_wait_while_firestore_is_unreachable_and_all_land_once_back(
    proxy, firestore_project, firestore_emulator
):
    ds = DataStorer([{"name": "x", "save": True}], config(proxy.address, firestore_project))
    ds.create_experiment(TrainingResult("outage"))
    ds.flush(timeout=30)  # the connection is up before the network goes
    proxy.pause()
    slowest = 0.0
    start = time.perf_counter()
    for i in range(10_000):
        t0 = time.perf_counter()
        ds.save_training_step("outage", step(i))
        slowest = max(slowest, time.perf_counter() - t0)
    total = time.perf_counter() - start
    # A network wait would be seconds; these bounds only catch one.
    assert slowest < 0.5, f"a save waited {slowest:.3f} s"
    assert total < 10, total
    with pytest.raises(TimeoutError):
        ds.flush(timeout=1.0)
    assert ds.stats().pending > 0
    proxy.resume()
    ds.flush(timeout=120)
    ds.close()
    st = ds.stats()
    assert st.written == st.accepted == 10_001 and st.failed == 0 and st.pending == 0
    fetched = DataFetcher(config(firestore_emulator.host, firestore_project)).get_training_result(
        "outage"
    )
    assert [s.get_metric("x") for s in fetched.get_steps()] == [
        [i, [i / 7, float(i)]] for i in range(10_000)
    ]
    assert physical_step_count(config(firestore_emulator.host, firestore_project),
                               "outage") == 10_000  # once each, as stored


def test_cut_connections_are_retried_and_nothing_is_doubled(
    proxy, firestore_project, firestore_emulator
):
    ds = DataStorer([{"name": "x", "save": True}], config(proxy.address, firestore_project))
    for i in range(3000):
        ds.save_training_step("cut", step(i))
        if i % 500 == 250:
            proxy.kill_connections()
    ds.close(timeout=120)
    assert ds.stats().failed == 0
    fetched = DataFetcher(config(firestore_emulator.host, firestore_project)).get_training_result(
        "cut"
    )
    assert [s.get_metric("x")[0] for s in fetched.get_steps()] == list(range(3000))
    assert physical_step_count(config(firestore_emulator.host, firestore_project),
                               "cut") == 3000


def test_full_queue_blocks_the_caller_until_room_and_stats_show_it(
    proxy, firestore_project, firestore_emulator
):
    ds = DataStorer([{"name": "x", "save": True}], config(proxy.address, firestore_project, 50))
    ds.save_training_step("full", step(0))
    ds.flush(timeout=30)
    proxy.pause()
    for i in range(1, 51):
        ds.save_training_step("full", step(i))
    assert ds.stats().pending == 50  # full
    done = threading.Event()
    t = threading.Thread(target=lambda: (ds.save_training_step("full", step(51)), done.set()))
    t.start()
    assert not done.wait(1.0), "a save into a full queue returned while the store was down"
    assert ds.stats().high_water == 50
    assert ds.stats().blocked == 1  # the waiting save is counted at once
    proxy.resume()
    assert done.wait(60)
    t.join()
    assert ds.stats().blocked_seconds >= 1.0  # and how long it waited
    ds.close(timeout=60)
    assert ds.stats().written == 52


def test_exit_with_an_unreachable_store_is_bounded_by_the_grace_period_and_reports_loss(
    proxy, firestore_project
):
    import subprocess
    import sys
    import textwrap

    cfg = config(proxy.address, firestore_project)
    cfg["writer"]["exit_grace_period"] = 2.0
    script = textwrap.dedent(
        f"""
        from asyncstore import DataStorer, TrainingStepResult
        ds = DataStorer([{{"name": "x", "save": True}}], {cfg!r})
        ds.save_training_step("lost", TrainingStepResult())
        ds.flush(timeout=30)
        print("connected", flush=True)
        import sys; sys.stdin.readline()  # the test cuts the network now
        for i in range(100):
            ds.save_training_step("lost", TrainingStepResult())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "connected"
    proxy.pause()
    start = time.monotonic()
    _, err = proc.communicate("go\n", timeout=60)
    took = time.monotonic() - start
    assert took < 30, f"exit took {took:.1f} s with a 2 s grace period"
    assert "100 accepted operation(s) could not be stored within the 2 s exit grace period" in err
