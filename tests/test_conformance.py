"""One suite, run against every document store: the embedded SQLite file and the real
Firestore emulator. What a user saves comes back exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

from asyncstore import (
    DataFetcher,
    DataStorer,
    NotFoundError,
    StorageError,
    TrainingResult,
    TrainingStepResult,
    comparisons,
)

from ._data import METRIC_CONFIG, assert_same, physical_step_count, saved_metrics, sparsey_step
from ._portal import storer_factory


@pytest.fixture(params=["thread", "asyncio", "trio"])
def make_storer(request: pytest.FixtureRequest):
    """DataStorer, and AsyncDataStorer with its writer in an asyncio or a trio loop."""
    with storer_factory(request.param) as factory:
        yield factory


@pytest.fixture(params=["local", "firestore"])
def store_config(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    if request.param == "local":
        db = {"name": "local", "path": str(tmp_path / "store.db")}
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        project = request.getfixturevalue("firestore_project")
        db = {"name": "firestore", "project": project, "emulator_host": emulator.host}
    return {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": db["name"], "write_databases": [db]},
        "writer": {"flush_interval": 0.05},
    }


def run_experiment(make_storer, cfg: dict[str, Any], exp_id: str, n_train: int, n_eval: int):
    rng = np.random.default_rng(7)
    metrics = {"feature_coverage": comparisons.max_by_layerwise_mean,
               "basis_set_size": "min_by_layerwise_mean"}
    train = TrainingResult(exp_id, "training", resolution=2, metrics=metrics,
                           configs={"model": {"layers": [16, 11, 7]}, "lr": 0.5})
    evaluation = TrainingResult(exp_id, "evaluation", resolution=2, metrics=metrics)
    with make_storer(METRIC_CONFIG, cfg) as ds:
        ds.create_experiment(train)
        for i in range(n_train):
            step = sparsey_step(i, rng)
            train.add_step(step)
            ds.save_training_step(exp_id, step)
        train.mark_finished()
        ds.save_training_result(train)
        for i in range(n_eval):
            step = sparsey_step(10_000 + i, rng)
            evaluation.add_step(step)
            ds.save_evaluation_step(exp_id, step)
        evaluation.mark_finished()
        ds.save_evaluation_result(evaluation)
    return train, evaluation


def assert_result_equal(got: TrainingResult, want: TrainingResult) -> None:
    assert got.id == want.id and got.result_type == want.result_type
    assert got.resolution == want.resolution
    assert got.start_time == want.start_time and got.end_time == want.end_time
    assert len(got.get_steps()) == len(want.get_steps())
    for k, (g, w) in enumerate(zip(got.get_steps(), want.get_steps())):
        assert g.start_time == w.start_time and g.end_time == w.end_time, k
        assert g.resolution == w.resolution
        assert_same(g.get_metrics(), saved_metrics(w), f"step {k}")
    assert set(got.best_steps) == set(want.best_steps)
    for name, best in want.best_steps.items():
        assert got.best_steps[name]["best_index"] == best["best_index"]
        assert got.best_steps[name]["best_function"] is best["best_function"]
        assert_same(got.best_steps[name]["best_value"], best["best_value"])
        assert got.get_best_step(name) is got.get_step(best["best_index"])


def test_training_and_evaluation_steps_round_trip_exactly(make_storer, store_config):
    train, evaluation = run_experiment(make_storer, store_config, "exp-conf", 1000, 200)
    fetcher = DataFetcher(store_config)
    got = fetcher.get_training_result("exp-conf")
    assert_result_equal(got, train)
    assert got.get_configs() == {"model": {"layers": [16, 11, 7]}, "lr": 0.5}
    assert_result_equal(fetcher.get_evaluation_result("exp-conf"), evaluation)
    step = fetcher.get_training_step_result("exp-conf", 537)
    assert_same(step.get_metrics(), saved_metrics(train.get_step(537)))
    with pytest.raises(ValueError):
        fetcher.get_training_step_result("exp-conf", 1000)
    with pytest.raises(ValueError):
        fetcher.get_training_step_result("exp-conf", -1)
    with pytest.raises(NotFoundError):
        fetcher.get_training_result("no-such-experiment")
    with pytest.raises(NotFoundError):
        fetcher.get_training_step_result("no-such-experiment", 0)


def test_step_numbering_is_per_experiment_and_phase(make_storer, store_config):
    with make_storer([{"name": "x", "save": True}], store_config) as ds:
        for exp in ("a", "b"):
            ds.create_experiment(TrainingResult(exp))
        for i in range(30):
            for exp in ("a", "b"):
                s = TrainingStepResult()
                s.add_metric("x", f"{exp}{i}")
                ds.save_training_step(exp, s)
                if i < 5:
                    ds.save_evaluation_step(exp, s)
    fetcher = DataFetcher(store_config)
    for exp in ("a", "b"):
        steps = fetcher.get_training_result(exp).get_steps()
        assert [s.get_metric("x") for s in steps] == [f"{exp}{i}" for i in range(30)]
        assert len(fetcher.get_evaluation_result(exp).get_steps()) == 5


def test_a_12_mb_tensor_and_2000_metric_keys_store(make_storer, store_config):
    big = torch.arange(3 * 1024 * 1024, dtype=torch.float32).reshape(1024, 3072)  # 12 MiB
    wide = TrainingStepResult()
    for k in range(2000):
        wide.add_metric(f"m{k}", [k, [float(k) / 3]])
    heavy = TrainingStepResult()
    heavy.add_metric("weights", big)
    metric_config = [{"name": "weights", "save": True}] + [
        {"name": f"m{k}", "save": True} for k in range(2000)
    ]
    with make_storer(metric_config, store_config) as ds:
        ds.create_experiment(TrainingResult("big"))
        ds.save_training_step("big", heavy)
        ds.save_training_step("big", wide)
    fetcher = DataFetcher(store_config)
    steps = fetcher.get_training_result("big").get_steps()
    assert_same(steps[0].get_metric("weights"), big)
    assert_same(steps[1].get_metrics(), wide.get_metrics())


@pytest.mark.parametrize("bad", [object(), {1, 2}, [1, object()], {"k": {3}}])
def test_unsupported_value_raises_at_the_call_and_later_steps_store(make_storer, store_config, bad):
    with make_storer([{"name": "x", "save": True}], store_config) as ds:
        ds.create_experiment(TrainingResult("e"))
        good = TrainingStepResult()
        good.add_metric("x", 1)
        ds.save_training_step("e", good)
        wrong = TrainingStepResult()
        wrong.add_metric("x", bad)
        with pytest.raises(TypeError):
            ds.save_training_step("e", wrong)
        ds.save_training_step("e", good)
        ds.flush()  # does not raise: the bad call never reached the queue
        assert ds.stats().failed == 0
    steps = DataFetcher(store_config).get_training_result("e").get_steps()
    assert [s.get_metric("x") for s in steps] == [1, 1]


@pytest.mark.parametrize("bad_id", ["a/b", "", "__x__", ".", "..", "x" * 1501])
def test_ids_firestore_cannot_hold_are_refused_on_every_store(make_storer, store_config, bad_id):
    with make_storer([{"name": "x", "save": True}], store_config) as ds:
        with pytest.raises(ValueError):
            ds.create_experiment(TrainingResult(bad_id))
        with pytest.raises(ValueError):
            ds.save_training_step(bad_id, TrainingStepResult())
        ds.save_training_step("fine", TrainingStepResult())
        ds.flush()
        assert ds.stats().written == 1
    with make_storer([{"name": "x", "save": True}], store_config) as ds:
        with pytest.raises(TypeError):
            ds.save_training_step(3, TrainingStepResult())  # type: ignore[arg-type]


def test_body_that_raises_inside_with_still_stores_every_step(make_storer, store_config):
    with pytest.raises(RuntimeError, match="training diverged"):
        with make_storer([{"name": "x", "save": True}], store_config) as ds:
            for i in range(250):
                s = TrainingStepResult()
                s.add_metric("x", i)
                ds.save_training_step("crashy", s)
            raise RuntimeError("training diverged")
    steps = DataFetcher(store_config).get_training_result("crashy").get_steps()
    assert [s.get_metric("x") for s in steps] == list(range(250))


def test_child_process_that_never_closes_leaves_every_step_stored(store_config, tmp_path):
    script = textwrap.dedent(
        f"""
        from asyncstore import DataStorer, TrainingResult, TrainingStepResult
        ds = DataStorer([{{"name": "x", "save": True}}], {store_config!r})
        ds.create_experiment(TrainingResult("child"))
        for i in range(500):
            s = TrainingStepResult()
            s.add_metric("x", [i, [i * 0.5]])
            ds.save_training_step("child", s)
        print("saved", ds.stats().accepted)
        # no close(), no flush(): the exit drain must store everything
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "saved 501" in out.stdout
    steps = DataFetcher(store_config).get_training_result("child").get_steps()
    assert [s.get_metric("x") for s in steps] == [[i, [i * 0.5]] for i in range(500)]


def test_tensor_changed_in_place_after_save_is_stored_as_it_was(make_storer, store_config):
    t = torch.zeros(4)
    with make_storer([{"name": "w", "save": True}], store_config) as ds:
        for i in range(3):
            s = TrainingStepResult()
            s.add_metric("w", t)
            ds.save_training_step("inplace", s)
            t += 1  # the training loop reuses its buffers
    steps = DataFetcher(store_config).get_training_result("inplace").get_steps()
    assert [s.get_metric("w").tolist() for s in steps] == [[float(i)] * 4 for i in range(3)]


FORKED = """
import os, sys
from asyncstore import DataStorer, TrainingStepResult
ds = DataStorer([{"name": "x", "save": True}], CONFIG)
for i in range(100):
    s = TrainingStepResult()
    s.add_metric("x", i)
    ds.save_training_step("forky", s)
pid = os.fork()
if pid == 0:  # a child, as a DataLoader worker is: the parent's storer is not its own
    try:
        ds.save_training_step("forky", TrainingStepResult())
        sys.exit(4)
    except RuntimeError as exc:
        if "forked child" not in str(exc):
            sys.exit(5)
    # a child storer of its own works
    with DataStorer([{"name": "x", "save": True}], CONFIG) as mine:
        s = TrainingStepResult()
        s.add_metric("x", -1)
        mine.save_training_step("child-own", s)
    sys.exit(0)  # a normal exit: atexit runs, and must write nothing of the parent's
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
ds.close()
"""


def test_forked_child_cannot_use_the_parents_storer_and_nothing_is_written_twice(
    store_config,
):
    out = subprocess.run([sys.executable, "-c", FORKED.replace("CONFIG", repr(store_config))],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "child 0" in out.stdout, out.stdout + out.stderr
    steps = DataFetcher(store_config).get_training_result("forky").get_steps()
    assert [s.get_metric("x") for s in steps] == list(range(100))
    assert physical_step_count(store_config, "forky") == 100
    child = DataFetcher(store_config).get_training_result("child-own").get_steps()
    assert [s.get_metric("x") for s in child] == [-1]


def test_completed_results_are_cached_and_running_ones_are_never_stale(make_storer, store_config):
    fetcher = DataFetcher(store_config)
    result = TrainingResult("live")
    with make_storer([{"name": "x", "save": True}], store_config) as ds:
        ds.create_experiment(result)
        for i in range(10):
            s = TrainingStepResult()
            s.add_metric("x", i)
            result.add_step(s)
            ds.save_training_step("live", s)
        ds.flush()
        assert len(fetcher.get_training_result("live").get_steps()) == 10
        for i in range(10, 15):
            s = TrainingStepResult()
            s.add_metric("x", i)
            result.add_step(s)
            ds.save_training_step("live", s)
        ds.flush()
        assert len(fetcher.get_training_result("live").get_steps()) == 15
        result.mark_finished()
        ds.save_training_result(result)
    first = fetcher.get_training_result("live")
    assert first.end_time == result.end_time
    fetcher._store.close()
    fetcher._store = None  # any further database read would now fail
    again = fetcher.get_training_result("live")
    assert again is first
    assert fetcher.get_training_step_result("live", 14).get_metric("x") == 14


def test_flush_reports_permanent_failures_with_what_failed(tmp_path):
    # A directory where the database file should be: SQLite cannot open it, ever.
    (tmp_path / "store.db").mkdir()
    cfg = {"wandb": {"mode": "disabled"},
           "database": {"write_databases": [{"name": "local", "path": str(tmp_path / "store.db")}]},
           "writer": {"retry": {"attempts": 2, "initial": 0.01, "max_wait": 0.02}}}
    ds = DataStorer([{"name": "x", "save": True}], cfg)
    ds.save_training_step("doomed", TrainingStepResult())
    with pytest.raises(StorageError) as info:
        ds.flush(timeout=30)
    assert "training steps 0-0 of experiment 'doomed'" in str(info.value)
    assert ds.stats().failed == 1 and ds.stats().last_error
    ds.flush()  # already reported
    ds.close()


@pytest.mark.parametrize("name", ["a.b", "__x__", "", "x`y", "with space", "ü"])
def test_any_metric_name_round_trips_on_every_store(store_config, name):
    result = TrainingResult("names", metrics={name: "max_by_layerwise_mean"})
    with DataStorer([{"name": name, "save": True}], store_config) as ds:
        ds.create_experiment(result)
        for v in (1.0, 3.0, 2.0):
            s = TrainingStepResult()
            s.add_metric(name, v)
            result.add_step(s)
            ds.save_training_step("names", s)
        result.mark_finished()
        ds.save_training_result(result)
    got = DataFetcher(store_config).get_training_result("names")
    assert got.best_steps[name]["best_index"] == 1
    assert [s.get_metric(name) for s in got.get_steps()] == [1.0, 3.0, 2.0]


def _doc_bytes(value: Any) -> int:
    """About what Firestore counts for a document: its strings and bytes, 8 a scalar."""
    if isinstance(value, (bytes, str)):
        return len(value) + 1
    if isinstance(value, dict):
        return sum(len(k) + 1 + _doc_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(_doc_bytes(v) for v in value)
    return 8


def test_results_sweeps_and_models_with_values_over_1_mib_store_on_every_store(store_config):
    """Best values, configs, HPO objectives and model configs as large as a step's
    tensors: each would be a field over Firestore's 1 MiB, so each is stored beside its
    document and comes back equal, and no stored document reaches 1 MiB."""
    from asyncstore import HPOResult, HPOStepResult
    from asyncstore._config import load_config
    from asyncstore._documents import (
        BATCHES, BLOBS, EXPERIMENTS, HPO_RUNS, MODEL_REGISTRY, MODELS,
    )
    from asyncstore.stores import open_store

    store_config["database"]["write_databases"][0]["save_models"] = True
    big = torch.arange(3 * 1024 * 1024, dtype=torch.float32).reshape(1024, 3072)  # 12 MiB
    configs = {"init": np.arange(400_000, dtype=np.int64), "lr": 0.1}  # 3.2 MB
    train = TrainingResult("huge", metrics={"w": "max_by_layerwise_mean"}, configs=configs)
    evaluation = TrainingResult("huge", "evaluation", metrics={"w": "max_by_layerwise_mean"})
    trial = HPOStepResult("sweep-huge", "huge", configs={"grid": big[:300]})  # 3.7 MB
    with DataStorer([{"name": "w", "save": True}], store_config) as ds:
        ds.create_hpo_sweep(HPOResult({"space": big[:200]}, "sweep-huge", "big"))
        ds.create_experiment(train)
        for k in range(2):
            s = TrainingStepResult()
            s.add_metric("w", big + k)
            train.add_step(s)
            ds.save_training_step("huge", s)
            evaluation.add_step(s)
            ds.save_evaluation_step("huge", s)
        train.mark_finished()
        evaluation.mark_finished()
        ds.save_training_result(train)
        ds.save_evaluation_result(evaluation)
        trial.populate({"total": 0.5, "map": big[:100]}, train, evaluation)
        ds.save_hpo_step("sweep-huge", trial)
        ds.save_model("huge", {"w": big[:10]}, {"model_name": "huge-net", "table": big[:150]})
    fetcher = DataFetcher(store_config)
    got = fetcher.get_training_result("huge")
    assert got.best_steps["w"]["best_index"] == 1
    assert_same(got.best_steps["w"]["best_value"], big + 1)
    assert_same(got.get_configs(), configs)
    assert_same(fetcher.get_evaluation_result("huge").best_steps["w"]["best_value"], big + 1)
    got_trial = fetcher.get_hpo_step_result("sweep-huge", "huge")
    assert_same(got_trial.get_objective(), {"total": 0.5, "map": big[:100]})
    assert_same(got_trial.configs, {"grid": big[:300]})
    sweep = fetcher.get_hpo_result("sweep-huge")
    assert_same(sweep.configs, {"space": big[:200]})
    assert sweep.best_run is not None and sweep.best_run.id == "huge"
    assert_same(fetcher.get_model_weights("huge-model")["w"], big[:10])

    raw = open_store(load_config(store_config).read_db)
    sizes = {
        table: max((_doc_bytes(doc) for _, doc in raw.query(table, {})), default=0)
        for table in (EXPERIMENTS, HPO_RUNS, MODELS, MODEL_REGISTRY, BATCHES, BLOBS)
    }
    raw.close()
    assert max(sizes.values()) < 1024 * 1024, sizes
    assert sizes[EXPERIMENTS] < 100_000, sizes  # the big values live beside it
