"""W&B as a sink: real offline runs, read back from their ``.wandb`` files.

What a run holds (rows per step, the averaged, layer and MAC keys, summaries, the HPO
objective, the model artifact), the caller's active run, failures kept to their own
lane, a worker that dies, a parent that dies, and the API key written nowhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from asyncstore import (
    AsyncDataStorer,
    DataFetcher,
    DataStorer,
    HPOStepResult,
    StorageError,
    TrainingResult,
    TrainingStepResult,
    load_config,
)
from asyncstore._wandb import WandbSink
from asyncstore._wandb_data import artifact_name, jsonable, run_id, step_row
from asyncstore._wiring import build_sinks
from asyncstore._synthetic import SparseyLike
from asyncstore.comparisons import average_nested_data
from asyncstore.stores import open_store

from ._data import METRIC_CONFIG, sparsey_step
from ._portal import storer_factory
from ._wandb_reader import RunFile, read_run, run_files

SENTINEL = "sentinel-4e1b9c0d7a2f4c6e8b3d5a7f9e1c2b4d6f8a0c2e"
METRICS = METRIC_CONFIG + [{"name": "num_activations", "save": True}]


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Everything wandb writes goes under ``tmp_path``; a sentinel API key is set."""
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    return tmp_path


def config(tmp: Path, resolution: int = 2, db_path: Path | None = None,
           **wandb: Any) -> dict[str, Any]:
    return {
        "wandb": {"mode": "offline", "dir": str(tmp / "runs"), "data_resolution": resolution,
                  "project_name": "asyncstore-tests", **wandb},
        "database": {"read_database": "local", "write_databases": [
            {"name": "local", "path": str(db_path or tmp / "store.db")}]},
        "writer": {"flush_interval": 0.05, "retry": {"attempts": 3, "initial": 0.05}},
    }


def the_run(tmp: Path) -> RunFile:
    [path] = run_files(tmp / "runs")
    return read_run(path)


def step_rows(run: RunFile, metric: str = "feature_coverage") -> list[dict[Any, Any]]:
    return [row for row in run.history if metric in row]


# --------------------------------------------------------------------------- expected keys


def expected_row(metrics: dict[str, Any], resolution: int) -> dict[str, float]:
    """The row the SPEC asks for, computed here from the saved values and
    ``average_nested_data`` on the slices that make each layer and MAC."""
    row = {}
    for name, value in metrics.items():
        row[name] = average_nested_data(value)
        if isinstance(value, torch.Tensor) and value.is_nested:
            layers: list[Any] | None = list(value.unbind())
        elif isinstance(value, list):
            layers = value
        else:
            layers = None  # a dense tensor, a dict, a scalar: no layers
        if resolution == 0 or layers is None:
            continue
        for i, layer in enumerate(layers):
            row[f"{name}/layer_{i}"] = average_nested_data(layer)
            if resolution < 2:
                continue
            if isinstance(layer, (torch.Tensor, np.ndarray)) and layer.ndim >= 2:
                macs = [layer[:, j] for j in range(layer.shape[1])]  # over batch (and pixels)
            else:
                macs = list(layer)
            for j, mac in enumerate(macs):
                row[f"{name}/layer_{i}/mac_{j}"] = average_nested_data(mac)
    return row


def assert_row(got: dict[Any, Any], want: dict[str, float]) -> None:
    assert {k for k in got if not str(k).startswith("_")} == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def training_steps(n: int) -> list[TrainingStepResult]:
    """Old-style steps (ragged lists, lists of tensors, numpy, None, NaN) and new-style
    ones (float32 nested tensors [batch, MACs] and basis averages [batch, MACs, pixels])."""
    rng = np.random.default_rng(11)
    model = SparseyLike(macs=(5, 3), pixels=6, batch=2, work_ms=0)
    return [sparsey_step(i, rng) if i % 2 == 0 else model.step() for i in range(n)]


# --------------------------------------------------------------------------- the run


@pytest.fixture(params=["thread", "asyncio", "trio"])
def make_storer(request: pytest.FixtureRequest):
    with storer_factory(request.param) as factory:
        yield factory


def test_an_offline_run_holds_every_step_summary_objective_and_model(
    wandb_env: Path, make_storer: Any, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="asyncstore")
    tmp = wandb_env
    train_steps, eval_steps = training_steps(8), training_steps(5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    train = TrainingResult("exp-wb", configs={"dataset_config": {"description": "MNIST 28x28"},
                                              "lr": 0.5})
    with make_storer(METRICS, config(tmp)) as ds:
        ds.create_experiment(train)
        for step in train_steps:
            ds.save_training_step("exp-wb", step)
        ds.save_training_result(train)
        for step in eval_steps:
            ds.save_evaluation_step("exp-wb", step)
        ds.save_evaluation_result(TrainingResult("exp-wb", "evaluation"))
        trial = HPOStepResult("sweep-wb", "exp-wb", configs={"lr": 0.5, "layers": [5, 3]})
        trial.populate({"total": 0.93, "accuracy": 0.9}, None, None)
        ds.save_hpo_step("sweep-wb", trial)
        ds.save_model("exp-wb", model, {"model_name": "sparsey-small", "layers": [5, 3]})
    run = the_run(tmp)
    assert run.run is not None and run.run.run_id == "exp-wb" and run.exited

    # one row per training step, in order, with the averaged, layer and MAC keys
    rows = step_rows(run)
    assert [row["_step"] for row in rows] == list(range(8))
    for row, step in zip(rows, train_steps, strict=True):
        saved = {k: v for k, v in step.get_metrics().items() if k != "not_saved"}
        assert_row(row, expected_row(saved, 2))
    assert rows[0]["feature_coverage/layer_1/mac_3"] == 0.0  # NaN counts as 0
    assert "basis_average/layer_0/mac_4" in rows[1]  # [batch, MACs, pixels] per MAC

    # summaries
    summary = run.summary
    assert summary["dataset_description"] == "MNIST 28x28"
    for name in ("feature_coverage", "match_accuracy", "basis_set_size", "basis_average"):
        want = sum(average_nested_data(s.get_metric(name)) for s in eval_steps) / len(eval_steps)
        assert summary[f"evaluation_{name}"] == pytest.approx(want), name
    assert summary["hpo_objective"] == 0.93
    assert summary["hpo_objective_details"] == {"total": 0.93, "accuracy": 0.9}
    assert summary["hpo_configs"] == {"lr": 0.5, "layers": [5, 3]}
    assert [row["hpo_objective"] for row in run.history if "hpo_objective" in row] == [0.93]
    assert run.config["lr"] == 0.5

    # the model: an artifact of type model with the state dict and the config
    [art] = run.artifacts
    assert (art.name, art.type) == ("exp-wb-model", "model")
    files = {c.path: c.local_path for c in art.manifest.contents}
    assert set(files) == {"model.pt", "model_config.json"}
    state = torch.load(files["model.pt"], weights_only=True)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    with open(files["model_config.json"], encoding="utf-8") as f:
        assert json.load(f) == {"model_name": "sparsey-small", "layers": [5, 3]}
    store = open_store(load_config(config(tmp)).read_db)
    try:
        doc = store.get("models", "exp-wb-model")
    finally:
        store.close()
    assert doc is not None and doc["wandb_artifact"]["name"] == "exp-wb-model"
    assert doc["wandb_artifact"]["project"] == "asyncstore-tests"
    assert any("not linked to the registry" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)  # shown by Python's default logging

    # the document store got everything too; W&B printed nothing on the caller's stdout
    assert len(DataFetcher(config(tmp)).get_training_result("exp-wb").get_steps()) == 8
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("resolution", [0, 1])
def test_data_resolution_sets_how_fine_the_keys_are(wandb_env: Path, resolution: int) -> None:
    steps = training_steps(4)
    with DataStorer(METRICS, config(wandb_env, resolution)) as ds:
        for step in steps:
            ds.save_training_step("exp-res", step)
    rows = step_rows(the_run(wandb_env))
    assert [row["_step"] for row in rows] == [0, 1, 2, 3]
    for row, step in zip(rows, steps, strict=True):
        saved = {k: v for k, v in step.get_metrics().items() if k != "not_saved"}
        assert_row(row, expected_row(saved, resolution))


# --------------------------------------------------------------------------- the caller's run


def run_script(script: str, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, so that wandb's service and globals stay out
    of the test process."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TMP_DIR=str(tmp))
    env.pop("WANDB_SERVICE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


PRELUDE = """
import json, os, sys
import wandb
from asyncstore import DataStorer, TrainingResult, TrainingStepResult
TMP = os.environ["TMP_DIR"]
os.makedirs(TMP + "/runs", exist_ok=True)
CFG = {"wandb": {"mode": "offline", "dir": TMP + "/runs"},
       "database": {"read_database": "local",
                    "write_databases": [{"name": "local", "path": TMP + "/store.db"}]},
       "writer": {"flush_interval": 0.05}}

def step(i):
    s = TrainingStepResult()
    s.add_metric("loss", [[i, i + 1.0], [2.0 * i]])
    return s
"""


def test_the_callers_active_run_gets_the_steps(wandb_env: Path) -> None:
    run_script(PRELUDE + textwrap.dedent("""
    run = wandb.init(project="sweep-project", mode="offline", dir=TMP + "/runs",
                     id="agent-trial", config={"lr": 0.1}, settings=wandb.Settings(console="off"))
    with DataStorer([{"name": "loss", "save": True}], CFG) as ds:
        ds.create_experiment(TrainingResult("exp-trial", configs={"lr": 99, "batch": 8}))
        for i in range(5):
            ds.save_training_step("exp-trial", step(i))
    run.log({"from_the_caller": 1})
    run.finish()
    """), wandb_env)
    run = the_run(wandb_env)  # no run of its own for the experiment
    assert run.run is not None and run.run.run_id == "agent-trial"
    rows = step_rows(run, "loss")
    assert [row["loss"] for row in rows] == [average_nested_data([[i, i + 1.0], [2.0 * i]])
                                            for i in range(5)]
    assert rows[2]["loss/layer_1/mac_0"] == 4.0
    assert run.history[-1]["from_the_caller"] == 1
    assert run.config["lr"] == 0.1  # the caller's values are never changed
    assert run.config["asyncstore_configs"] == {"lr": 99, "batch": 8}


# --------------------------------------------------------------------------- failures


def test_a_broken_wandb_fails_its_lane_only(wandb_env: Path, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "wandb"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('this wandb is broken')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))  # the worker imports this wandb
    rng = np.random.default_rng(3)
    ds = DataStorer(METRIC_CONFIG, config(wandb_env))
    ds.create_experiment(TrainingResult("exp-broken"))
    for i in range(5):
        ds.save_training_step("exp-broken", sparsey_step(i, rng))
    with pytest.raises(StorageError) as info:
        ds.close()
    assert info.value.failures
    assert all("store 'wandb'" in text and "broken" in text for text in info.value.failures)
    assert len(DataFetcher(config(wandb_env)).get_training_result("exp-broken").get_steps()) == 5


def test_a_failing_document_store_does_not_hold_back_wandb(wandb_env: Path) -> None:
    (wandb_env / "a-directory").mkdir()
    cfg = config(wandb_env, db_path=wandb_env / "a-directory")  # SQLite cannot open it
    rng = np.random.default_rng(4)
    ds = DataStorer(METRIC_CONFIG, cfg)
    for i in range(6):
        ds.save_training_step("exp-nodb", sparsey_step(i, rng))
    with pytest.raises(StorageError) as info:
        ds.close()
    assert info.value.failures
    assert not any("store 'wandb'" in text for text in info.value.failures)
    assert [row["_step"] for row in step_rows(the_run(wandb_env))] == list(range(6))


def worker_pid(ds: DataStorer) -> int:
    [sink] = [s for s in ds._writer.sinks if isinstance(s, WandbSink)]
    proc = sink._worker._proc
    assert proc is not None
    return proc.pid


def test_a_worker_that_dies_is_replaced(wandb_env: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A dead worker is a transient failure: the commit is retried with a new worker,
    which resumes the run. (Rows the dead worker had handed to its wandb service but
    that service had not yet written are W&B's to lose, as for any process killed while
    using wandb: here, steps 2 and 3 may be missing from the first file.)"""
    rng = np.random.default_rng(5)
    with DataStorer(METRIC_CONFIG, config(wandb_env)) as ds:
        for i in range(4):
            ds.save_training_step("exp-crash", sparsey_step(i, rng))
        ds.flush()
        os.kill(worker_pid(ds), signal.SIGKILL)
        for i in range(4, 8):
            ds.save_training_step("exp-crash", sparsey_step(i, rng))
        ds.flush()
        assert ds.stats().failed == 0
    assert any("W&B worker" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)
    runs = [read_run(p) for p in run_files(wandb_env / "runs")]
    assert len(runs) == 2  # the run, resumed by the new worker
    assert [row["_step"] for row in step_rows(runs[1])] == [4, 5, 6, 7]
    first = [row["_step"] for row in step_rows(runs[0])]
    assert first == list(range(len(first)))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_bound_on_aclose_holds_even_with_a_hung_wandb_worker(wandb_env: Path,
                                                               backend: str) -> None:
    """The caller's move_on_after bounds aclose: a W&B worker that hangs (SIGSTOP) is
    given a moment, then killed; the document store has every step meanwhile."""
    import anyio

    cfg = config(wandb_env)
    rng = np.random.default_rng(8)

    async def main() -> tuple[float, int]:
        procs = []
        try:
            async with AsyncDataStorer(METRIC_CONFIG, cfg) as store:
                for i in range(3):
                    await store.save_training_step("exp-hung", sparsey_step(i, rng))
                await store.flush()
                [sink] = [s for s in store._writer.sinks if isinstance(s, WandbSink)]
                proc = sink._worker._proc
                assert proc is not None
                procs.append(proc)
                os.kill(proc.pid, signal.SIGSTOP)
                for i in range(3, 10):
                    await store.save_training_step("exp-hung", sparsey_step(i, rng))
                start = time.monotonic()
                with anyio.move_on_after(1.0) as scope:
                    await store.aclose()
                assert scope.cancelled_caught
            return time.monotonic() - start, proc.wait(5)
        finally:
            for p in procs:  # never leave a stopped process behind a failed test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)

    took, code = anyio.run(main, backend=backend)
    assert took < 1.0 + 2.0 + 2.0, took  # the bound, HURRIED_CLOSE, slack
    assert code == -signal.SIGKILL  # the hung worker was killed, not waited for
    steps = DataFetcher(cfg).get_training_result("exp-hung").get_steps()
    assert len(steps) == 10


def test_the_worker_stops_when_its_parent_dies(wandb_env: Path) -> None:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent("""
    ds = DataStorer([{"name": "loss", "save": True}], CFG)
    for i in range(3):
        ds.save_training_step("exp-orphan", step(i))
    ds.flush()
    [sink] = [s for s in ds._writer.sinks if s.name == "wandb"]
    print(sink._worker._proc.pid, flush=True)
    os.kill(os.getpid(), 9)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TMP_DIR=str(wandb_env))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and _alive(pid):
        assert time.monotonic() < deadline, "the W&B worker outlived its parent"
        time.sleep(0.1)
    run = the_run(wandb_env)  # finished cleanly: the exit record is there
    assert run.exited and [row["_step"] for row in step_rows(run, "loss")] == [0, 1, 2]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------------- secrets


def test_the_api_key_is_written_nowhere(wandb_env: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_WANDB_KEY", SENTINEL)
    cfg = config(wandb_env, api_key="MY_WANDB_KEY")
    rng = np.random.default_rng(6)
    with DataStorer(METRIC_CONFIG, cfg) as ds:
        ds.create_experiment(TrainingResult("exp-secret", configs={"lr": 1}))
        for i in range(3):
            ds.save_training_step("exp-secret", sparsey_step(i, rng))
        ds.save_model("exp-secret", torch.nn.Linear(2, 2))
        ds.flush()
        with open(f"/proc/{worker_pid(ds)}/environ", "rb") as f:
            assert SENTINEL.encode() not in f.read()  # offline: the worker never has it
    written = [p for p in wandb_env.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and len(written) > 5
    for path in written:
        assert SENTINEL.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert SENTINEL not in captured.out + captured.err + caplog.text


def test_an_online_run_writes_the_api_key_nowhere_and_a_dead_server_fails_its_lane_only(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Online, the worker must hand the key to wandb; no file wandb or asyncstore writes
    (logs, settings, a netrc in $HOME) and no log line may hold it. The server here is a
    closed port: each try to start the run fails, the worker is replaced before the
    retry (so the error stays the network's), and the document store has everything."""
    caplog.set_level(logging.DEBUG)
    home = wandb_env / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MY_WANDB_KEY", SENTINEL)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard: refused
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    cfg = config(wandb_env, mode="online", api_key="MY_WANDB_KEY")
    cfg["writer"]["retry"] = {"attempts": 2, "initial": 0.05}
    rng = np.random.default_rng(12)
    ds = DataStorer(METRIC_CONFIG, cfg)
    ds.create_experiment(TrainingResult("exp-online", configs={"lr": 1}))
    for i in range(3):
        ds.save_training_step("exp-online", sparsey_step(i, rng))
    [sink] = [s for s in ds._writer.sinks if isinstance(s, WandbSink)]
    deadline = time.monotonic() + 60
    while sink._worker._proc is None:  # the worker, started by the first commit
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with open(f"/proc/{sink._worker._proc.pid}/environ", "rb") as f:
        assert SENTINEL.encode() in f.read()  # online: wandb was given the key
    with pytest.raises(StorageError) as info:
        ds.close(timeout=120)
    assert info.value.failures and all("store 'wandb'" in t for t in info.value.failures)
    assert not any("in use" in t for t in info.value.failures), info.value.failures
    assert len(DataFetcher(cfg).get_training_result("exp-online").get_steps()) == 3
    written = [p for p in wandb_env.rglob("*") if p.is_file()]
    assert any("debug" in p.name for p in written)  # wandb did write its logs
    for path in written:
        assert SENTINEL.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert SENTINEL not in captured.out + captured.err + caplog.text


# --------------------------------------------------------------------------- wiring, artifacts


def test_wiring_follows_the_resolved_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    db = {"read_database": "local",
          "write_databases": [{"name": "local", "path": str(tmp_path / "s.db")}]}
    for wandb, count in (({"mode": "disabled"}, 0), ({}, 1), ({"mode": "offline"}, 1)):
        sinks = build_sinks(load_config({"wandb": wandb, "database": db}), own_thread=True)
        assert len([s for s in sinks if isinstance(s, WandbSink)]) == count
        for s in sinks:
            assert s.level == 2 or not isinstance(s, WandbSink)
            if isinstance(s, WandbSink):
                assert s._worker._proc is None  # started on first use only
            else:
                s.store.close()  # type: ignore[attr-defined]


def test_create_artifact_returns_a_real_artifact(wandb_env: Path) -> None:
    import wandb

    content = {"lr": 0.5, "layers": [3, 2], "name": "small", "weights": torch.ones(2, 2)}
    cfg = config(wandb_env, mode="disabled")
    with DataStorer(METRIC_CONFIG, cfg) as ds:
        art = ds.create_artifact(content)

    async def make() -> Any:
        async with AsyncDataStorer(METRIC_CONFIG, cfg) as store:
            return await store.create_artifact(content)

    import anyio

    again = anyio.run(make)
    for a in (art, again):
        assert isinstance(a, wandb.Artifact) and a.type == "content"
        with open(a.manifest.entries["content.json"].local_path, encoding="utf-8") as f:
            assert json.load(f) == {"lr": 0.5, "layers": [3, 2], "name": "small",
                                    "weights": 1.0}
    assert art.name == again.name  # named after its content
    with pytest.raises(TypeError):
        ds.create_artifact([1, 2])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rows and names


def nested(parts: list[torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.nested.nested_tensor(parts)


def test_rows_reduce_every_kind_of_metric_value() -> None:
    g = torch.Generator().manual_seed(0)
    basis = nested([torch.rand(3, 4, 10, generator=g), torch.rand(3, 2, 10, generator=g)])
    metrics = {
        "basis": basis,
        "bf16": nested([torch.rand(1, 3, generator=g).bfloat16()]),
        "ints": [np.arange(4, dtype=np.int64), np.array([[1, 3], [5, 7]])],
        "bools": [torch.tensor([True, False, True])],
        "ragged": [[1, 2, float("nan")], [], [[1, 2], [3]]],
        "dense": torch.ones(2, 3),
        "scalar": 0.25,
        "none": None,
        "text": "not a number",
        "complex": [torch.ones(2, dtype=torch.complex64)],
    }
    row = step_row(metrics, 2)
    want = expected_row({k: v for k, v in metrics.items() if k not in ("text", "complex")}, 2)
    assert set(row) == set(want)  # the unreadable metrics are left out whole
    for key, value in want.items():
        assert row[key] == pytest.approx(value, rel=1e-6), key
    assert row["basis/layer_1/mac_1"] == pytest.approx(basis.unbind()[1][:, 1].mean().item())
    assert row["ints/layer_1/mac_1"] == 5.0 and row["ragged/layer_0/mac_2"] == 0.0
    assert row["ragged/layer_2/mac_0"] == 1.5 and row["ragged/layer_1"] == 0.0
    assert set(step_row(metrics, 0)) == {"basis", "bf16", "ints", "bools", "ragged", "dense",
                                         "scalar", "none"}
    assert "basis/layer_1" in step_row(metrics, 1) and "basis/layer_1/mac_0" not in step_row(
        metrics, 1)
    assert all(math.isfinite(v) for v in row.values())


def test_names_and_json_values() -> None:
    assert run_id("exp-42") == "exp-42" and artifact_name("exp-42") == "exp-42-model"
    odd = run_id("trial: 7/8, lr=0.1")  # ':' ',' ' ' are not allowed in a W&B run id
    assert odd.startswith("trial__7_8__lr_0.1-") and odd == run_id("trial: 7/8, lr=0.1")
    assert run_id("trial: 7/8, lr=0.2") != odd
    assert len(run_id("x" * 300)) <= 64 and len(artifact_name("y" * 300)) <= 128
    assert jsonable({"a": torch.tensor(2.5), "b": np.float32(1.5), 3: (1, None),
                     "c": float("nan"), "d": torch.ones(3)}) == {
        "a": 2.5, "b": 1.5, "3": [1, None], "c": None, "d": 1.0}
