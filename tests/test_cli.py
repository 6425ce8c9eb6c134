"""The command line, run as a user runs it (a subprocess) on a store filled here, on the
embedded store and on the Firestore emulator; and the fetcher's browsing methods behind
it."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from asyncstore import (
    DataFetcher,
    DataStorer,
    HPOResult,
    HPOStepResult,
    NotFoundError,
    StorageError,
    TrainingResult,
    TrainingStepResult,
    _codec,
)
from asyncstore._catalog import experiment_summary, iter_records
from asyncstore._layout import group_writes, step_record
from asyncstore._plot import Series, collect, draw

from ._data import METRIC_CONFIG, nested, sparsey_step
from ._wandb_reader import read_run, run_files

N_TRAIN, N_EVAL = 120, 20
TRIALS = {"trial-b": 0.7, "trial-a": 0.9, "trial-c": None}  # in the order they are saved
CLI = [sys.executable, "-m", "asyncstore.cli"]


def run_cli(*args: str, cwd: Path, config: Path | None = None,
            timeout: float = 120, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    argv = [*CLI, *(["--config", str(config)] if config else []), *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def fill(cfg: dict[str, Any]) -> dict[str, Any]:
    """An experiment with training and evaluation steps, and a sweep of three trials."""
    rng = np.random.default_rng(3)
    metrics = {"feature_coverage": "max_by_layerwise_mean"}
    train = TrainingResult("exp-1", resolution=2, metrics=metrics,
                           configs={"model": {"layers": [16, 11, 7]}, "lr": 0.5})
    evaluation = TrainingResult("exp-1", "evaluation", resolution=2, metrics=metrics)
    with DataStorer(METRIC_CONFIG, cfg) as ds:
        ds.create_experiment(train)
        for i in range(N_TRAIN):
            step = sparsey_step(i, rng)
            train.add_step(step)
            ds.save_training_step("exp-1", step)
        train.mark_finished()
        ds.save_training_result(train)
        for i in range(N_EVAL):
            step = sparsey_step(i, rng)
            evaluation.add_step(step)
            ds.save_evaluation_step("exp-1", step)
        evaluation.mark_finished()
        ds.save_evaluation_result(evaluation)
        sweep = HPOResult(configs={"method": "bayes"}, id="sweep-1", name="layer sizes")
        ds.create_hpo_sweep(sweep)
        for exp_id, total in TRIALS.items():
            result = TrainingResult(exp_id)
            ds.create_experiment(result)
            result.mark_finished()
            ds.save_training_result(result)
            trial = HPOStepResult("sweep-1", exp_id, configs={"lr": len(exp_id) / 10})
            trial.populate({"total": total, "accuracy": 0.5}, result, None)
            ds.save_hpo_step("sweep-1", trial)
            sweep.add_step(trial)
        sweep.mark_finished()
        ds.save_hpo_result(sweep)
    return {"train": train, "evaluation": evaluation, "sweep": sweep}


@pytest.fixture(scope="module", params=["local", "firestore"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A filled store, once per module and kind: its config file, folder and results."""
    folder = tmp_path_factory.mktemp(f"cli-{request.param}")
    project = None
    if request.param == "local":
        db: dict[str, Any] = {"name": "local", "path": str(folder / "store.db")}
    else:
        emulator = request.getfixturevalue("firestore_emulator")
        project = "cli-" + uuid.uuid4().hex[:12]
        db = {"name": "firestore", "project": project, "emulator_host": emulator.host}
    cfg = {
        "wandb": {"mode": "disabled"},
        "database": {"read_database": db["name"], "write_databases": [db]},
        # Runs of at most 10 steps: a fetch spans several reads (progress, iter_steps).
        "writer": {"flush_interval": 0.05, "max_batch_steps": 10},
    }
    results = fill(cfg)
    path = folder / "system.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield {"kind": request.param, "config": path, "cfg": cfg, "folder": folder, **results}
    if project is not None:
        try:
            request.getfixturevalue("firestore_emulator").reset(project)
        except Exception:
            pass


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- help


def test_every_command_has_help_and_the_entry_point_is_installed(tmp_path):
    script = Path(sys.executable).with_name("asyncstore")  # the installed entry point
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("Usage: asyncstore [OPTIONS] COMMAND")
    for command in ("demo", "ls", "show", "show-sweep", "plot", "recover"):
        assert f"  {command} " in top.stdout
        proc = run_cli(command, "--help", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f" {command} " in proc.stdout.splitlines()[0]
    assert not (tmp_path / "asyncstore.db").exists()  # help creates nothing


# --------------------------------------------------------------------------- ls


def test_ls_lists_experiments_and_sweeps_newest_first(store):
    proc = run_cli("ls", cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    exp_rows = [ln.split()[0] for ln in lines if ln.startswith(("exp-", "trial-"))]
    # The trials were created after exp-1: newest first puts them before it.
    assert exp_rows[-1] == "exp-1" and set(exp_rows) == {"exp-1", *TRIALS}
    assert any(ln.startswith("sweep-1") and "layer sizes" in ln and "completed" in ln
               for ln in lines)
    assert proc.stderr == ""

    doc = json.loads(run_cli("ls", "--json", cwd=store["folder"],
                             config=store["config"]).stdout)
    assert [e["id"] for e in doc["experiments"]] == exp_rows
    starts = [datetime.fromisoformat(e["start_time"]) for e in doc["experiments"]]
    assert starts == sorted(starts, reverse=True)
    exp1 = doc["experiments"][-1]
    assert exp1["phases"] == {"training": True, "evaluation": True} and exp1["sweep"] is None
    assert {e["id"]: e["sweep"] for e in doc["experiments"]}["trial-a"] == "sweep-1"
    (sweep,) = doc["sweeps"]
    assert sweep["id"] == "sweep-1" and sweep["trials"] == 3
    assert sweep["best_run_id"] == "trial-a" and sweep["best_total"] == 0.9
    assert sweep["completed"] is True


def test_fetcher_lists_and_summarises_without_reading_steps(store):
    fetcher = DataFetcher(store["cfg"])
    assert fetcher.list_experiments()[-1].id == "exp-1"
    assert [s.id for s in fetcher.list_sweeps()] == ["sweep-1"]
    summary = fetcher.get_experiment_summary("exp-1")
    assert {n: p.steps for n, p in summary.phases.items()} == {"training": N_TRAIN,
                                                              "evaluation": N_EVAL}
    assert summary.phases["training"].stored_metrics == [
        m["name"] for m in METRIC_CONFIG if m["save"]]
    with pytest.raises(NotFoundError):
        fetcher.get_experiment_summary("nope")
    with pytest.raises(NotFoundError):
        fetcher.get_sweep_summary("nope")


# --------------------------------------------------------------------------- show


def test_show_prints_phases_step_counts_best_steps_and_configs(store):
    train = store["train"]
    proc = run_cli("show", "exp-1", cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("experiment exp-1\n")
    assert re.search(rf"^training\s+{N_TRAIN}\s+\d{{4}}-\d\d-\d\d .*completed$", out, re.M)
    assert re.search(rf"^evaluation\s+{N_EVAL}\s", out, re.M)
    best = train.best_steps["feature_coverage"]["best_index"]
    assert re.search(rf"^training\s+feature_coverage\s+{best}\s+\S+ \(mean of list of 3\)"
                     r"\s+max_by_layerwise_mean$", out, re.M)
    assert "layers: [16, 11, 7]" in out and "lr: 0.5" in out
    assert "basis_set_size, feature_coverage, match_accuracy" in out


def test_show_json_is_one_document_with_iso_times_and_plain_values(store):
    train, evaluation = store["train"], store["evaluation"]
    proc = run_cli("show", "exp-1", "--json", cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["id"] == "exp-1" and doc["configs"] == {"model": {"layers": [16, 11, 7]},
                                                       "lr": 0.5}
    t = doc["phases"]["training"]
    assert t["steps"] == N_TRAIN and doc["phases"]["evaluation"]["steps"] == N_EVAL
    assert datetime.fromisoformat(t["start_time"]) == train.start_time
    assert datetime.fromisoformat(t["end_time"]) == train.end_time
    assert t["completed"] is True and t["resolution"] == 2
    assert t["metrics"] == {"feature_coverage": "max_by_layerwise_mean"}
    best = t["best_steps"]["feature_coverage"]
    want = train.best_steps["feature_coverage"]
    assert best["best_index"] == want["best_index"]
    assert best["best_function"] == "max_by_layerwise_mean"
    # A ragged list per layer, NaN written as null (JSON has no NaN).
    assert [len(layer) for layer in best["best_value"]] == [16, 11, 7]
    flat = [x for layer in want["best_value"] for x in layer]
    got = [x for layer in best["best_value"] for x in layer]
    assert got == [None if math.isnan(x) else x for x in flat]
    assert doc["phases"]["evaluation"]["best_steps"]["feature_coverage"]["best_index"] == \
        evaluation.best_steps["feature_coverage"]["best_index"]
    assert doc["hpo"] is None


def test_show_of_a_trial_names_its_sweep_and_objective(store):
    doc = json.loads(run_cli("show", "trial-a", "--json", cwd=store["folder"],
                             config=store["config"]).stdout)
    assert doc["hpo"] == {"sweep": "sweep-1", "objective": {"total": 0.9, "accuracy": 0.5},
                          "configs": {"lr": 0.7}}
    assert doc["phases"]["training"]["steps"] == 0


# --------------------------------------------------------------------------- show-sweep


def test_show_sweep_ranks_trials_by_objective(store):
    want = [s.id for s in store["sweep"].get_top_k_steps(3)]
    assert want[:2] == ["trial-a", "trial-b"]
    proc = run_cli("show-sweep", "sweep-1", cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines()
            if re.match(r"^\s*(\d+|-)\s+trial-", ln)]
    assert [r[1] for r in rows] == ["trial-a", "trial-b", "trial-c"]
    assert [r[0] for r in rows] == ["1", "2", "-"]
    assert rows[0][2:4] == ["0.9", "0.5"]  # total, then the objective's accuracy
    assert 'sweep sweep-1 "layer sizes" (completed)' in proc.stdout
    assert "method: bayes" in proc.stdout

    doc = json.loads(run_cli("show-sweep", "sweep-1", "--json", "--top", "2",
                             cwd=store["folder"], config=store["config"]).stdout)
    assert doc["trial_count"] == 3 and doc["best_run_id"] == "trial-a"
    assert [t["id"] for t in doc["trials"]] == ["trial-a", "trial-b"]
    assert doc["trials"][0] == {"rank": 1, "id": "trial-a", "total": 0.9,
                                "objective": {"total": 0.9, "accuracy": 0.5},
                                "configs": {"lr": 0.7}}
    assert doc["configs"] == {"method": "bayes"} and doc["completed"] is True


# --------------------------------------------------------------------------- plot


def test_plot_writes_a_png_of_every_phase(store, tmp_path):
    from PIL import Image

    out = tmp_path / "fc.png"
    proc = run_cli("plot", "exp-1", "--metric", "activations", "-o", str(out),
                   cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"wrote {out} (activations over {N_TRAIN} training, "
                                   f"{N_EVAL} evaluation steps of exp-1)")
    assert proc.stderr == ""  # not a terminal: no progress bar
    with Image.open(out) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert height == 900 and 1600 <= width <= 2800  # 4.5 in at 200 dpi, two panels
        pixels = np.asarray(img.convert("L"))
    assert (pixels < 128).mean() > 0.01  # something is drawn, not a blank canvas

    # The default name, here; a scalar metric with gaps (None) draws too.
    proc = run_cli("plot", "exp-1", "-m", "maybe", "--phase", "training",
                   cwd=store["folder"], config=store["config"])
    assert proc.returncode == 0, proc.stderr
    assert (store["folder"] / "exp-1-maybe.png").stat().st_size > 10_000


def test_plot_draws_one_line_per_layer_and_the_mean_over_layers():
    rng = np.random.default_rng(0)
    steps = [sparsey_step(i, rng) for i in range(30)]
    for metric in ("activations", "feature_coverage", "match_accuracy"):
        series = collect(steps, metric)
        assert len(series.layers) == 3 and all(len(v) == 30 for v in series.layers)
    flat = collect(steps, "basis_average")  # a [3, 4] tensor: not layered
    assert not flat.layered and len(flat.mean) == 30
    maybe = collect(steps, "maybe")
    assert maybe.scalar and math.isnan(maybe.mean[0]) and maybe.mean[2] == 1.0

    layered = collect(steps, "activations")
    want = [float(t.float().mean()) for t in steps[4].get_metric("activations").unbind()]
    assert [layered.layers[k][4] for k in range(3)] == pytest.approx(want)
    fig = draw({"training": layered, "evaluation": collect(steps[:5], "activations")},
               "exp-9", "activations")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "layer 0", "layer 1", "layer 2", "mean over layers"]
    train_ax, eval_ax = fig.axes
    assert train_ax.get_xlabel() == "training step" and eval_ax.get_xlabel() == "evaluation step"
    assert train_ax.get_ylabel() == "activations (mean per layer)"
    assert "activations" in fig._suptitle.get_text() and "exp-9" in fig._suptitle.get_text()
    assert len(train_ax.get_lines()) == 4


def test_a_nested_tensor_with_more_layers_later_keeps_earlier_steps_as_gaps():
    s = Series()
    s.add(0, nested([torch.ones(2)]))
    s.add(1, nested([torch.ones(2), torch.zeros(3)]))
    s.add(2, None)
    assert s.layers[0] == [1.0, 1.0, pytest.approx(math.nan, nan_ok=True)]
    assert math.isnan(s.layers[1][0]) and s.layers[1][1] == 0.0


def test_plot_shows_progress_on_a_terminal_only(store, tmp_path):
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "--config", str(store["config"]), "plot", "exp-1", "-m", "activations",
         "-o", str(tmp_path / "p.png")],
        stdout=subprocess.PIPE, stderr=follower, text=True, cwd=tmp_path,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    text = seen.decode(errors="replace")
    assert "reading training steps" in text and f"{N_TRAIN}/{N_TRAIN}" in text


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv", [
    ("show", "nope"),
    ("show", "nope", "--json"),
    ("plot", "nope", "-m", "activations"),
    ("show-sweep", "nope"),
])
def test_an_unknown_id_is_one_line_and_exit_1(store, argv):
    line = one_error_line(run_cli(*argv, cwd=store["folder"], config=store["config"]))
    assert line.startswith("Error: no ") and "'nope'" in line


def test_bad_input_is_one_line_and_exit_1(store, tmp_path):
    cfg, folder = store["config"], store["folder"]
    line = one_error_line(run_cli("plot", "exp-1", "-m", "nope", cwd=folder, config=cfg))
    assert line == ("Error: experiment 'exp-1' has no metric 'nope'; its steps hold: "
                    "activations, basis_average, basis_set_size, feature_coverage, "
                    "input_counts, mac_inputs, match_accuracy, maybe")
    line = one_error_line(run_cli("show", "a/b", cwd=folder, config=cfg))
    assert "must not contain '/'" in line
    line = one_error_line(run_cli("plot", "exp-1", "-m", "activations", "-o",
                                  str(tmp_path / "no" / "dir" / "x.png"), cwd=folder,
                                  config=cfg))
    assert line.startswith("Error: cannot write ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("writer:\n  queue_size: 0\n")
    line = one_error_line(run_cli("ls", cwd=folder, config=bad))
    assert "writer.queue_size" in line
    line = one_error_line(run_cli("ls", cwd=folder, config=tmp_path / "missing.yaml"))
    assert "not found" in line
    spool = tmp_path / "spool.db"
    spool.write_text("not a spool")
    line = one_error_line(run_cli("recover", str(spool), cwd=folder, config=cfg))
    assert line.startswith(f"Error: cannot read spool {spool}")
    line = one_error_line(run_cli("recover", str(tmp_path / "none.db"), cwd=folder))
    assert "no spool" in line


def test_no_store_here_is_reported_and_not_created(tmp_path):
    for argv in (("ls",), ("show", "x"), ("plot", "x", "-m", "y")):
        line = one_error_line(run_cli(*argv, cwd=tmp_path))
        assert line.startswith(f"Error: no store at {tmp_path / 'asyncstore.db'}")
    assert list(tmp_path.iterdir()) == []


def test_system_yaml_in_the_folder_is_the_default(store, tmp_path):
    (tmp_path / "system.yaml").write_text(store["config"].read_text())
    proc = run_cli("show", "exp-1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["phases"]["training"]["steps"] == N_TRAIN


# --------------------------------------------------------------------------- demo


def test_demo_in_an_empty_folder_stores_and_reads_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_DIR"}  # as a user has it
    proc = run_cli("demo", cwd=tmp_path, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    exp_id = re.search(r"experiment (demo-[0-9a-f]{8})", out).group(1)
    assert f"stored 500 of 500 training and 50 of 50 evaluation steps of experiment {exp_id}" \
        in out
    assert re.search(r"per step: [\d.]+ ms without storage, [\d.]+ ms with", out)
    assert re.search(r"save_training_step on the hot path: p50 \d+ us, p99 \d+ us", out)
    assert f"data lives in {tmp_path / 'asyncstore.db'}" in out
    assert proc.stderr == ""
    # ... and every training step went to an offline W&B run in ./wandb, in order.
    assert re.search(rf"W&B \(offline\) run: {re.escape(str(tmp_path / 'wandb'))}\S*{exp_id}",
                     out)
    [run_file] = run_files(tmp_path / "wandb")
    rows = [r for r in read_run(run_file).history if "match_accuracy" in r]
    assert [r["_step"] for r in rows] == list(range(500))
    assert "match_accuracy/layer_1/mac_3" in rows[0]
    # What it prints next works.
    shown = json.loads(run_cli("show", exp_id, "--json", cwd=tmp_path).stdout)
    assert shown["phases"]["training"]["steps"] == 500
    assert shown["phases"]["evaluation"]["steps"] == 50
    proc = run_cli("plot", exp_id, "--metric", "match_accuracy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{exp_id}-match_accuracy.png").exists()


# --------------------------------------------------------------------------- iter_steps


def test_iter_steps_matches_get_training_result_and_reports_progress(store):
    fetcher = DataFetcher(store["cfg"])
    seen: list[tuple[int, int]] = []
    steps = list(fetcher.iter_steps("exp-1", progress=lambda d, t: seen.append((d, t))))
    fresh = DataFetcher(store["cfg"]).get_training_result("exp-1").get_steps()
    assert len(steps) == N_TRAIN
    for a, b in zip(steps, fresh):
        assert _codec.encode(a.get_metrics()) == _codec.encode(b.get_metrics())
        assert a.start_time == b.start_time
    assert seen[0] == (0, N_TRAIN) and seen[-1] == (N_TRAIN, N_TRAIN) and len(seen) > 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(NotFoundError):
        list(fetcher.iter_steps("nope"))


class _Docs:
    """A DocumentReader over a dict: enough for the reading code."""

    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs

    def get(self, table: str, doc_id: str) -> dict[str, Any] | None:
        return self.docs.get(doc_id)

    def get_many(self, table: str, doc_ids: list[str]) -> list[dict[str, Any] | None]:
        return [self.docs.get(d) for d in doc_ids]

    def query(self, table, equals, fields=None):
        return [(i, {k: d[k] for k in (fields or d) if k in d}) for i, d in self.docs.items()
                if all(d.get(k) == v for k, v in equals.items())]

    def close(self) -> None:
        pass


def test_iter_records_takes_each_step_once_in_order_when_a_replay_cut_runs_differently():
    def run(first: int, count: int, tag: str) -> dict[str, dict[str, Any]]:
        payload = b""
        for i in range(first, first + count):
            s = TrainingStepResult()
            s.add_metric("x", f"{tag}{i}")
            payload += _codec.encode(step_record(i, s, {"x"}))
        return {w.doc_id: dict(w.fields) for w in group_writes("e", "training", first, count,
                                                                 payload)}

    docs = {**run(0, 10, "a"), **run(5, 10, "b"), **run(0, 5, "c"), **run(20, 3, "d")}
    incomplete = run(30, 2, "e")
    docs.update(incomplete)
    docs[next(iter(incomplete))]["chunks"] = 2  # a run missing a chunk is left out
    got = [(r["i"], r["m"]["x"][0]) for r in iter_records(_Docs(docs), "e", "training")]
    assert [i for i, _ in got] == [*range(15), 20, 21, 22]


def test_the_metric_names_come_from_the_first_step_even_when_it_spans_documents():
    big = TrainingStepResult()
    big.add_metric("weights", torch.zeros(300_000))  # 1.2 MB: two documents
    big.add_metric("loss", 1.0)
    small = TrainingStepResult()
    small.add_metric("loss", 0.5)
    docs: dict[str, dict[str, Any]] = {}
    for first, steps in ((0, [big, small]), (2, [small])):
        payload = b"".join(_codec.encode(step_record(first + k, s, {"weights", "loss"}))
                           for k, s in enumerate(steps))
        docs.update({w.doc_id: dict(w.fields)
                     for w in group_writes("e", "training", first, len(steps), payload)})
    assert sum(d["first"] == 0 for d in docs.values()) == 2
    summary = experiment_summary(_Docs(docs), "e")
    assert summary.phases["training"].stored_metrics == ["weights", "loss"]
    assert summary.phases["training"].steps == 3 and summary.configs == {}


def test_recover_exits_1_while_dead_letters_still_fail_and_stores_them_once_fixed(tmp_path):
    broken = tmp_path / "store.db"
    broken.mkdir()  # SQLite cannot open a directory: every commit fails for good
    spool = tmp_path / "spool.db"
    cfg = {"wandb": {"mode": "disabled"},
           "database": {"write_databases": [{"name": "local", "path": str(broken)}]},
           "writer": {"spool_path": str(spool),
                      "retry": {"attempts": 1, "initial": 0.01, "max_wait": 0.01}}}
    ds = DataStorer([{"name": "x", "save": True}], cfg)
    for i in range(10):
        s = TrainingStepResult()
        s.add_metric("x", i)
        ds.save_training_step("dl", s)
    with pytest.raises(StorageError):
        ds.close()
    still = run_cli("recover", str(spool), cwd=tmp_path)
    assert still.returncode == 1
    assert still.stdout.startswith("10 operation(s) in the spool: 0 stored, 10 still failing")
    assert "experiment 'dl'" in still.stderr and "Traceback" not in still.stderr
    broken.rmdir()  # the cause is gone
    fixed = run_cli("recover", str(spool), cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.startswith("10 operation(s) in the spool: 10 stored, 0 still failing")
    steps = DataFetcher(cfg).get_training_result("dl").get_steps()
    assert [s.get_metric("x") for s in steps] == list(range(10))
