"""The public face: names, the seed's methods, configuration errors."""

from __future__ import annotations

import pytest

import asyncstore
from asyncstore import ConfigError, DataFetcher, DataStorer, TrainingStepResult


def test_public_names_are_exported_sorted_and_importable():
    assert asyncstore.__all__ == sorted(asyncstore.__all__)
    for name in asyncstore.__all__:
        assert getattr(asyncstore, name) is not None


def test_constructing_without_any_configuration_is_a_clear_error(monkeypatch):
    from asyncstore import _defaults

    monkeypatch.setattr(_defaults, "_default", None)
    with pytest.raises(ConfigError, match="configure"):
        DataStorer([{"name": "x", "save": True}])
    with pytest.raises(ConfigError, match="configure"):
        DataFetcher()


def test_configure_sets_the_process_default_and_seed_attributes(monkeypatch, tmp_path):
    from asyncstore import _defaults

    monkeypatch.setattr(_defaults, "_default", None)
    monkeypatch.setattr(DataStorer, "is_initialized", False)
    db = str(tmp_path / "x.db")
    DataStorer.configure({"wandb": {"mode": "disabled"},
                          "database": {"write_databases": [{"name": "local", "path": db}]}})
    assert DataStorer.is_initialized and DataStorer.wandb_config["mode"] == "disabled"
    assert DataStorer.firestore_config == {}
    with DataStorer([{"name": "x", "save": True}]) as ds:
        s = TrainingStepResult()
        s.add_metric("x", 3)
        ds.save_training_step("e", s)
    assert DataFetcher().get_training_step_result("e", 0).get_metric("x") == 3


def test_invalid_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        DataStorer([], {"writer": {"queue_size": 0}})
    assert info.value.key == "writer.queue_size"


def test_stats_is_an_immutable_record_and_close_is_idempotent(tmp_path):
    cfg = {"database": {"write_databases": [{"name": "local", "path": str(tmp_path / "s.db")}]}}
    ds = DataStorer([{"name": "x", "save": True}], cfg)
    for _ in range(5):
        ds.save_training_step("e", TrainingStepResult())
    ds.close()
    ds.close()
    st = ds.stats()
    assert st._fields == ("accepted", "written", "pending", "retried", "failed", "spilled",
                          "high_water", "last_error", "blocked", "blocked_seconds")
    assert (st.accepted, st.written, st.pending, st.failed) == (5, 5, 0, 0)
    with pytest.raises(AttributeError):
        st.accepted = 3  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="closed"):
        ds.save_training_step("e", TrainingStepResult())


def test_bad_models_are_refused_at_the_call(tmp_path):
    cfg = {"database": {"write_databases": [{"name": "local", "path": str(tmp_path / "s.db")}]}}
    with DataStorer([], cfg) as ds:
        with pytest.raises(TypeError):
            ds.save_model("e", None)  # checked at the call: None is not a model
        assert ds.average_nested_data([[1.0, 3.0], [5.0]]) == 3.5


def test_experiment_session_on_the_thread_storer(tmp_path):
    from asyncstore import TrainingResult

    cfg = {"database": {"write_databases": [{"name": "local", "path": str(tmp_path / "s.db")}]}}
    result = TrainingResult("sess", result_type="evaluation")
    with DataStorer([{"name": "x", "save": True}], cfg) as ds, ds.experiment(result):
        ds.save_evaluation_step("sess", TrainingStepResult())
    got = DataFetcher(cfg).get_evaluation_result("sess")
    assert got.end_time == result.end_time is not None and len(got.get_steps()) == 1
