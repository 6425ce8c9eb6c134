"""HPO sweeps on every document store: trials round-trip, the best run is the true best,
and any number of workers may write trials of one sweep at the same time."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from typing import Any

import anyio
import numpy as np
import pytest
import torch

from asyncstore import (
    DataFetcher,
    DataStorer,
    HPOResult,
    HPOStepResult,
    NotFoundError,
    TrainingResult,
    TrainingStepResult,
    load_config,
)
from asyncstore._documents import HPO_RUNS, coalesce
from asyncstore._front import Front
from asyncstore._sweeps import run_key, trial_writes
from asyncstore.stores.local import LocalStore

from ._data import assert_same

METRICS = [{"name": "acc", "save": True}, {"name": "layers", "save": True}]


def _config(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if kind == "local":
        db: dict[str, Any] = {"name": "local", "path": str(tmp_path / "store.db")}
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        project = request.getfixturevalue("firestore_project")
        db = {"name": "firestore", "project": project, "emulator_host": emulator.host}
    return {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": db["name"], "write_databases": [db]},
        "writer": {"flush_interval": 0.05},
    }


@pytest.fixture(params=["local", "firestore"])
def store_config(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    return _config(request.param, request, tmp_path)


def run_trial(
    ds: DataStorer, sweep_id: str, exp_id: str, total: Any, configs: dict[str, Any],
    n_train: int = 3, n_eval: int = 2,
) -> HPOStepResult:
    """One trial as Sparsey's HPO runs it: an experiment with training and evaluation
    steps and results, then its objective saved to the sweep."""
    train = TrainingResult(exp_id, metrics={"acc": "max_by_layerwise_mean"}, configs=configs)
    evaluation = TrainingResult(exp_id, "evaluation", metrics={"acc": "max_by_layerwise_mean"})
    ds.create_experiment(train)
    for i in range(n_train):
        step = TrainingStepResult()
        step.add_metric("acc", [[0.1 * i, 0.2], [float(i)]])
        step.add_metric("layers", torch.arange(3, dtype=torch.float32) * i)
        step.mark_finished()
        train.add_step(step)
        ds.save_training_step(exp_id, step)
    train.mark_finished()
    ds.save_training_result(train)
    for i in range(n_eval):
        step = TrainingStepResult()
        step.add_metric("acc", [[0.5 + i], [0.25]])
        step.mark_finished()
        evaluation.add_step(step)
        ds.save_evaluation_step(exp_id, step)
    evaluation.mark_finished()
    ds.save_evaluation_result(evaluation)
    trial = HPOStepResult(sweep_id, exp_id, configs)
    trial.populate(
        {"total": total, "details": {"acc": np.float32(0.5), "per_layer": [0.25, 0.75]},
         "weights": torch.tensor([0.5, 0.5])},
        train, evaluation,
    )
    ds.save_hpo_step(sweep_id, trial)
    return trial


def assert_phase_equal(got: TrainingResult | None, want: TrainingResult | None) -> None:
    assert got is not None and want is not None
    assert got.id == want.id and got.result_type == want.result_type
    assert got.start_time == want.start_time and got.end_time == want.end_time
    assert len(got.get_steps()) == len(want.get_steps())
    for g, w in zip(got.get_steps(), want.get_steps()):
        assert_same(g.get_metrics(), w.get_metrics())
    assert got.best_steps.keys() == want.best_steps.keys()
    for name, best in want.best_steps.items():
        assert got.best_steps[name]["best_index"] == best["best_index"]


def assert_trial_equal(got: HPOStepResult, want: HPOStepResult) -> None:
    assert (got.parent_run, got.id) == (want.parent_run, want.id)
    assert_same(got.configs, want.configs)
    assert_same(got.get_objective(), want.get_objective())
    assert_phase_equal(got.get_training_results(), want.get_training_results())
    assert_phase_equal(got.get_eval_results(), want.get_eval_results())


def test_a_sweep_of_five_trials_round_trips(store_config):
    sweep = HPOResult({"method": "bayes", "metric": {"goal": "maximize"}}, "sweep-5", "five")
    totals = [0.25, 0.875, -1.5, 0.625, 0.5]
    with DataStorer(METRICS, store_config) as ds:
        ds.create_hpo_sweep(sweep)
        for k, total in enumerate(totals):
            sweep.add_step(run_trial(ds, sweep.id, f"trial-{k}", total, {"lr": 10.0**-k, "k": k}))
        sweep.mark_finished()
        ds.save_hpo_result(sweep)

    fetcher = DataFetcher(store_config)
    got = fetcher.get_hpo_result("sweep-5")
    assert (got.id, got.name) == ("sweep-5", "five")
    assert_same(got.configs, sweep.configs)
    assert got.start_time == sweep.start_time and got.end_time == sweep.end_time
    assert [s.id for s in got.get_steps()] == [f"trial-{k}" for k in range(5)]
    for g, w in zip(got.get_steps(), sweep.get_steps()):
        assert_trial_equal(g, w)
    assert got.best_run is not None and got.best_run.id == "trial-1"
    assert [s.id for s in got.get_top_k_steps(3)] == ["trial-1", "trial-3", "trial-4"]
    assert [s.id for s in got.get_top_k_steps(3)] == [s.id for s in sweep.get_top_k_steps(3)]

    doc = fetcher._store.get(HPO_RUNS, "sweep-5")
    assert doc is not None
    assert doc["completed"] is True and doc["best_run_id"] == "trial-1"
    assert doc["best_total"] == 0.875
    assert doc["runs_by_objective"] == [s.id for s in sweep.get_top_k_steps(5)]

    one = fetcher.get_hpo_step_result("sweep-5", "trial-3")
    assert_trial_equal(one, sweep.get_steps()[3])
    assert fetcher.get_hpo_result("sweep-5") is got  # completed: cached
    with pytest.raises(NotFoundError):
        fetcher.get_hpo_result("no-such-sweep")
    with pytest.raises(NotFoundError):
        fetcher.get_hpo_step_result("sweep-5", "no-such-trial")
    with pytest.raises(NotFoundError):
        DataFetcher(store_config).get_hpo_step_result("other-sweep", "trial-0")


def test_a_sweep_just_created_has_no_runs_and_is_not_completed(store_config):
    sweep = HPOResult({"method": "grid"}, "fresh", "fresh sweep")
    with DataStorer(METRICS, store_config) as ds:
        ds.create_hpo_sweep(sweep)
    fetcher = DataFetcher(store_config)
    got = fetcher.get_hpo_result("fresh")
    assert got.get_steps() == [] and got.best_run is None and got.end_time is None
    assert got.start_time == sweep.start_time and got.configs == {"method": "grid"}
    doc = fetcher._store.get(HPO_RUNS, "fresh")
    assert doc is not None
    assert (doc["runs"], doc["completed"], doc["best_run_id"]) == ({}, False, None)


def test_a_sweep_in_progress_is_never_served_stale(store_config):
    sweep = HPOResult({}, "live-sweep", "live")
    fetcher = DataFetcher(store_config)
    with DataStorer(METRICS, store_config) as ds:
        ds.create_hpo_sweep(sweep)
        run_trial(ds, sweep.id, "a", 0.5, {})
        ds.flush()
        first = fetcher.get_hpo_result("live-sweep")
        assert [s.id for s in first.get_steps()] == ["a"]
        run_trial(ds, sweep.id, "b", 0.75, {})
        ds.flush()
        again = fetcher.get_hpo_result("live-sweep")
        assert [s.id for s in again.get_steps()] == ["a", "b"]
        assert again.best_run is not None and again.best_run.id == "b"


def test_trials_without_a_total_or_with_ties_rank_as_hpo_result_does(store_config):
    sweep = HPOResult({}, "ties", "ties")
    with DataStorer(METRICS, store_config) as ds:
        ds.create_hpo_sweep(sweep)
        for exp, total in [("none", None), ("nan", float("nan")), ("t1", torch.tensor(0.5)),
                           ("t2", np.float64(0.5)), ("low", -2)]:
            sweep.add_step(run_trial(ds, sweep.id, exp, total, {}, n_train=1, n_eval=0))
        ds.save_hpo_result(sweep)
    fetcher = DataFetcher(store_config)
    got = fetcher.get_hpo_result("ties")
    assert got.best_run is not None and got.best_run.id == "t1" == sweep.best_run.id
    assert [s.id for s in got.get_top_k_steps(5)] == [s.id for s in sweep.get_top_k_steps(5)]
    doc = fetcher._store.get(HPO_RUNS, "ties")
    assert doc is not None and doc["best_run_id"] == "t1"
    assert doc["runs_by_objective"] == ["t1", "t2", "low", "none", "nan"]
    assert_same(got.get_steps()[2].get_objective()["total"], torch.tensor(0.5))


def test_a_trial_saved_again_is_one_run_not_two(store_config):
    sweep = HPOResult({}, "again", "again")
    with DataStorer(METRICS, store_config) as ds:
        ds.create_hpo_sweep(sweep)
        trial = run_trial(ds, sweep.id, "x", 0.25, {"v": 1}, n_train=1, n_eval=0)
        ds.flush()
        ds.save_hpo_step(sweep.id, trial)  # a replay: same trial, same objective
        other = run_trial(ds, sweep.id, "y", 0.5, {}, n_train=1, n_eval=0)
        trial.populate({"total": 0.75}, trial.training_results, None)
        ds.save_hpo_step(sweep.id, trial)  # the trial's objective revised upwards
    got = DataFetcher(store_config).get_hpo_result("again")
    assert [s.id for s in got.get_steps()] == ["x", "y"]  # x keeps its place
    assert got.best_run is not None and got.best_run.id == "x"
    assert got.get_steps()[0].get_objective() == {"total": 0.75}
    assert other.id == "y"


def test_bad_hpo_arguments_raise_at_the_call_and_queue_nothing(store_config):
    with DataStorer(METRICS, store_config) as ds:
        with pytest.raises(ValueError):
            ds.create_hpo_sweep(HPOResult({}, "a/b", "bad id"))
        with pytest.raises(TypeError):
            ds.create_hpo_sweep("sweep")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ds.create_hpo_sweep(HPOResult({}, "s", 7))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ds.create_hpo_sweep(HPOResult({"k": object()}, "s", "s"))
        unpopulated = HPOStepResult("s", "e", {})
        with pytest.raises(TypeError, match="populate"):
            ds.save_hpo_step("s", unpopulated)
        for bad_total in ("0.5", torch.ones(2), 1j):
            trial = HPOStepResult("s", "e", {})
            trial.populate({"total": bad_total}, None, None)
            with pytest.raises(TypeError):
                ds.save_hpo_step("s", trial)
        good = HPOStepResult("s", "e", {})
        good.populate({"total": 1.0}, None, None)
        for bad_parent in ("", "__x__", "x/y"):
            with pytest.raises(ValueError):
                ds.save_hpo_step(bad_parent, good)
        with pytest.raises(ValueError):
            ds.save_hpo_step("s", HPOStepResult("s", "..", {}))
        with pytest.raises(TypeError):
            ds.save_hpo_result(None)  # type: ignore[arg-type]
        ds.save_hpo_step("s", good)
        ds.flush()
        assert ds.stats().accepted == 1 and ds.stats().failed == 0
    fetcher = DataFetcher(store_config)
    assert [s.id for s in fetcher.get_hpo_result("s").get_steps()] == ["e"]
    # A trial saved without its experiment: no training or evaluation results.
    only = fetcher.get_hpo_step_result("s", "e")
    assert only.get_training_results() is None and only.get_eval_results() is None


# --------------------------------------------------------------------------- concurrency


def test_trials_in_one_commit_become_one_write_of_the_sweep(tmp_path):
    front = Front(load_config({"wandb": {"mode": "disabled"}}), frozenset())
    writes = front.hpo_sweep(HPOResult({}, "s", "s")).writes
    for k in range(10):
        trial = HPOStepResult("s", f"e{k}", {})
        trial.populate({"total": float(k % 4)}, None, None)
        writes += front.hpo_step("s", trial).writes
    writes += front.hpo_result(HPOResult({}, "s", "s")).writes
    folded = coalesce(writes)
    sweep_writes = [w for w in folded if w.table == HPO_RUNS]
    assert len(sweep_writes) == 1 and len(folded) == 11  # 10 experiments + the sweep
    assert list(sweep_writes[0].rank["entries"]) == [run_key(f"e{k}") for k in range(10)]

    store = LocalStore(tmp_path / "s.db")
    store.commit_sync(writes)
    store.commit_sync(writes)  # a retried commit changes nothing
    doc = store.get(HPO_RUNS, "s")
    assert doc is not None
    assert [doc["runs"][run_key(f"e{k}")]["n"] for k in range(10)] == list(range(10))
    assert doc["best_run_id"] == "e3" and doc["best_total"] == 3.0
    assert doc["runs_by_objective"][:3] == ["e3", "e7", "e2"]


def test_firestore_commits_to_one_sweep_are_paced_and_coalesced(firestore_emulator,
                                                                 firestore_project):
    from asyncstore._config import FirestoreDatabaseConfig
    from asyncstore.stores.firestore import FirestoreStore

    cfg = FirestoreDatabaseConfig(project=firestore_project,
                                  emulator_host=firestore_emulator.host)
    store = FirestoreStore(cfg)
    store.hot_interval = 0.4

    def trial(k: int) -> list[Any]:
        t = HPOStepResult("paced", f"e{k}", {})
        t.populate({"total": float(k)}, None, None)
        return trial_writes("paced", t)

    async def main() -> float:
        start = time.monotonic()
        for k in range(3):
            await store.commit(trial(k))
        await store.commit(trial(3) + trial(4) + trial(5))  # one write of the sweep
        await store.aclose()
        return time.monotonic() - start

    elapsed = anyio.run(main)
    assert elapsed >= 3 * 0.4 - 0.05
    doc = store.get(HPO_RUNS, "paced")
    assert doc is not None and len(doc["runs"]) == 6 and doc["best_run_id"] == "e5"
    store.close()


def test_firestore_blocking_commits_from_many_threads_lose_no_trial(firestore_emulator,
                                                                    firestore_project):
    # The path AsyncDataStorer (and trio) takes: the blocking client in worker threads.
    from asyncstore._config import FirestoreDatabaseConfig
    from asyncstore.stores.firestore import FirestoreStore

    cfg = FirestoreDatabaseConfig(project=firestore_project,
                                  emulator_host=firestore_emulator.host)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        store = FirestoreStore(cfg)
        store.hot_interval = 0.0
        try:
            for t in range(5):
                trial = HPOStepResult("threads", f"w{w}-t{t}", {})
                trial.populate({"total": float(w * 5 + t)}, None, None)
                store._commit_blocking(trial_writes("threads", trial))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    reader = FirestoreStore(cfg)
    doc = reader.get(HPO_RUNS, "threads")
    reader.close()
    assert doc is not None
    assert sorted(e["n"] for e in doc["runs"].values()) == list(range(40))
    assert doc["best_run_id"] == "w7-t4" and doc["best_total"] == 39.0


WORKERS, TRIALS, ROUNDS = 8, 5, 3


def _total(worker: int, trial: int, round_: int) -> float:
    # A permutation of 0..39 that puts the best trial somewhere else in every round.
    return float(((worker * TRIALS + trial) * 17 + round_ * 11) % (WORKERS * TRIALS))


def _sweep_worker(cfg: dict[str, Any], sweeps: list[str], worker: int, barrier: Any) -> None:
    for round_, sweep_id in enumerate(sweeps):
        barrier.wait(timeout=300)  # every worker starts each round at the same time
        with DataStorer(METRICS, cfg) as ds:
            for t in range(TRIALS):
                run_trial(ds, sweep_id, f"{sweep_id}-w{worker}-t{t}",
                          _total(worker, t, round_), {"worker": worker, "trial": t},
                          n_train=2, n_eval=1)


@pytest.mark.parametrize("kind", ["local", "firestore"])
def test_eight_processes_write_trials_of_one_sweep_at_once(kind, request, tmp_path):
    cfg = _config(kind, request, tmp_path)
    sweeps = [f"sweep-{kind}-{r}" for r in range(ROUNDS)]
    with DataStorer(METRICS, cfg) as ds:
        for sweep_id in sweeps:
            ds.create_hpo_sweep(HPOResult({"workers": WORKERS}, sweep_id, sweep_id))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_sweep_worker, args=(cfg, sweeps, w, barrier))
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * WORKERS

    fetcher = DataFetcher(cfg)
    for round_, sweep_id in enumerate(sweeps):
        got = fetcher.get_hpo_result(sweep_id)
        want = {f"{sweep_id}-w{w}-t{t}": _total(w, t, round_)
                for w in range(WORKERS) for t in range(TRIALS)}
        assert sorted(s.id for s in got.get_steps()) == sorted(want), f"round {round_}"
        for s in got.get_steps():
            assert s.get_objective()["total"] == want[s.id]
            assert len(s.get_training_results().get_steps()) == 2
            assert len(s.get_eval_results().get_steps()) == 1
        best = max(want, key=want.__getitem__)
        assert got.best_run is not None and got.best_run.id == best, f"round {round_}"
        top = sorted(want, key=want.__getitem__, reverse=True)[:3]
        assert [s.id for s in got.get_top_k_steps(3)] == top
        doc = fetcher._store.get(HPO_RUNS, sweep_id)
        assert doc is not None
        assert doc["best_run_id"] == best and doc["best_total"] == max(want.values())
        # Every trial got its own arrival number: no read-modify-write interleaved.
        assert sorted(e["n"] for e in doc["runs"].values()) == list(range(WORKERS * TRIALS))
        assert not math.isnan(doc["best_total"])


def test_trial_and_sweep_operations_survive_the_spool_unchanged():
    from asyncstore._spool import op_from_bytes, op_to_bytes

    front = Front(load_config({"wandb": {"mode": "disabled"}}), frozenset())
    trial = HPOStepResult("s", "e", {"lr": 0.5})
    trial.populate({"total": torch.tensor(0.25), "parts": [1, 2]}, None, None)
    for op in (front.hpo_sweep(HPOResult({"m": 1}, "s", "s")), front.hpo_step("s", trial),
               front.hpo_result(HPOResult({}, "s", "s"))):
        back = op_from_bytes(op_to_bytes(op))
        assert back.writes == op.writes  # rank included: it is plain data


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_total_on_the_gpu_stores(tmp_path):
    cfg = _config("local", None, tmp_path)  # type: ignore[arg-type]
    with DataStorer(METRICS, cfg) as ds:
        trial = HPOStepResult("gpu", "g", {})
        trial.populate({"total": torch.tensor(0.5, device="cuda")}, None, None)
        ds.save_hpo_step("gpu", trial)
    got = DataFetcher(cfg).get_hpo_result("gpu")
    assert got.best_run is not None and got.best_run.get_objective()["total"].item() == 0.5
