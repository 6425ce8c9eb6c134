"""The system configuration: defaults, the seed's YAML shape, and one ConfigError per bad key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncstore._config import (
    FirestoreDatabaseConfig,
    LocalDatabaseConfig,
    SystemConfig,
    load_config,
    redacted,
    write_database,
)
from asyncstore._exceptions import ConfigError

SEED_YAML = """\
wandb:
  api_key: WANDB_API_KEY        # name of the environment variable holding the key
  project_name: sparsey_project
  mode: offline                 # online | offline | disabled
  data_resolution: 2            # 0 model, 1 layer, 2 MAC
  save_models: true
database:
  read_database: local          # must also be a write database
  write_databases:
    - name: local               # embedded default, one file on disk
      path: asyncstore.db
      data_resolution: 2        # 0 nothing, 1 summaries, 2 every step
    - name: firestore
      project: my-gcp-project
      firebase_service_key_path: FIREBASE_CONFIG_FILE  # env var holding the key file path
      emulator_host: null       # or host:port; FIRESTORE_EMULATOR_HOST also honoured
      data_resolution: 2
      save_models: false
      table_names: {experiments: experiments, hpo_runs: hpo_runs, batches: batches,
                    models: models, model_registry: model_registry}
writer:                          # all optional, with sensible defaults
  queue_size: 10000
  flush_interval: 0.25           # seconds
  on_full: block                 # block | spill (to the local spool, never lose data)
  spool_path: null               # durable journal for crash recovery
  retry: {attempts: 10, initial: 0.1, max_wait: 10.0, deadline: 300.0}
"""

SECRET = "s3cr3t-sentinel-value-9f8e7d"


@pytest.fixture
def seed_dict() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SEED_YAML)
    return data


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "FIREBASE_CONFIG_FILE", "FIRESTORE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)


def test_no_config_gives_every_default() -> None:
    cfg = load_config()

    assert cfg == load_config({}) == SystemConfig()
    assert cfg.wandb.api_key == "WANDB_API_KEY"
    assert cfg.wandb.project_name == "sparsey_project"
    assert cfg.wandb.mode is None
    assert cfg.wandb.data_resolution == 2
    assert cfg.wandb.save_models is True
    assert cfg.wandb.entity is None and cfg.wandb.dir is None
    assert cfg.database.read_database == "local"
    assert cfg.database.write_databases == (LocalDatabaseConfig(),)
    local = cfg.read_db
    assert isinstance(local, LocalDatabaseConfig)
    assert (local.path, local.data_resolution, local.save_models) == ("asyncstore.db", 2, True)
    assert local.table_names.experiments == "experiments"
    assert local.table_names.model_registry == "model_registry"
    w = cfg.writer
    assert (w.queue_size, w.flush_interval, w.on_full, w.spool_path) == (10000, 0.25, "block", None)
    assert (w.exit_grace_period, w.max_batch_steps) == (30.0, 1000)
    r = w.retry
    assert (r.attempts, r.initial, r.max_wait, r.deadline) == (10, 0.1, 10.0, 300.0)


def test_firestore_defaults() -> None:
    fs = FirestoreDatabaseConfig()

    assert fs.project == "asyncstore-local"
    assert fs.firebase_service_key_path == "FIREBASE_CONFIG_FILE"
    assert fs.emulator_host is None
    assert fs.save_models is False
    assert fs.database == "(default)"
    assert fs.data_resolution == 2


def test_seed_shaped_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "system.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")

    for source in (path, str(path)):
        cfg = load_config(source)
        assert cfg.wandb.mode == "offline"
        assert [db.name for db in cfg.database.write_databases] == ["local", "firestore"]
        fs = write_database(cfg, "firestore")
        assert isinstance(fs, FirestoreDatabaseConfig)
        assert fs.project == "my-gcp-project"
        assert fs.table_names.hpo_runs == "hpo_runs"
        assert cfg.read_db is write_database(cfg, "local")
        assert write_database(cfg, "mongo") is None


def test_dict_and_file_give_the_same_config(tmp_path: Path, seed_dict: dict[str, Any]) -> None:
    path = tmp_path / "system.yaml"
    path.write_text(SEED_YAML, encoding="utf-8")

    assert load_config(seed_dict) == load_config(path)


def test_validated_config_passes_through_unchanged() -> None:
    cfg = load_config({"writer": {"queue_size": 5}})

    assert load_config(cfg) is cfg


def test_config_is_frozen() -> None:
    cfg = load_config()

    with pytest.raises(ValueError):
        cfg.writer.queue_size = 1  # type: ignore[misc]
    hash(cfg)


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = tmp_path / "system.yaml"
    path.write_text("writer:\n  # queue_size: 5\nwandb:\n", encoding="utf-8")

    assert load_config(path) == SystemConfig()


def test_int_given_for_float_is_accepted() -> None:
    assert load_config({"writer": {"flush_interval": 1}}).writer.flush_interval == 1.0


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("dotted", "value", "key"),
    [
        ("writer.queue_size", 0, "writer.queue_size"),
        ("writer.queue_size", "10", "writer.queue_size"),
        ("writer.queue_size", 10.0, "writer.queue_size"),
        ("writer.queue_size", True, "writer.queue_size"),
        ("writer.flush_interval", -1, "writer.flush_interval"),
        ("writer.flush_interval", 0, "writer.flush_interval"),
        ("writer.flush_interval", "0.25", "writer.flush_interval"),
        ("writer.flush_interval", float("nan"), "writer.flush_interval"),
        ("writer.on_full", "drop", "writer.on_full"),
        ("writer.bogus", 1, "writer.bogus"),
        ("writer.retry.attempts", 0, "writer.retry.attempts"),
        ("writer.retry.initial", 0, "writer.retry.initial"),
        ("writer.retry.max_wait", 0.01, "writer.retry.max_wait"),
        ("writer.retry.deadline", -5.0, "writer.retry.deadline"),
        ("writer", 5, "writer"),
        ("bogus", {}, "bogus"),
        ("wandb.data_resolution", 3, "wandb.data_resolution"),
        ("wandb.data_resolution", "2", "wandb.data_resolution"),
        ("wandb.data_resolution", True, "wandb.data_resolution"),
        ("wandb.mode", "sometimes", "wandb.mode"),
        ("wandb.save_models", "yes", "wandb.save_models"),
        ("wandb.save_models", 1, "wandb.save_models"),
        ("wandb.api_key", "", "wandb.api_key"),
        ("wandb.project_name", "a/b", "wandb.project_name"),
        ("wandb.colour", "red", "wandb.colour"),
        ("database.read_database", "firestore-2", "database.read_database"),
        ("database.write_databases", [], "database.write_databases"),
        (
            "database.write_databases.1.data_resolution",
            3,
            "database.write_databases.1.data_resolution",
        ),
        ("database.write_databases.0.save_models", "yes", "database.write_databases.0.save_models"),
        ("database.write_databases.0.path", 7, "database.write_databases.0.path"),
        ("database.write_databases.0.extra", 7, "database.write_databases.0.extra"),
        ("database.write_databases.1", {"name": "mongo"}, "database.write_databases.1"),
        ("database.write_databases.1", {"project": "p"}, "database.write_databases.1"),
        (
            "database.write_databases.1",
            {"name": "local", "path": "other.db"},
            "database.write_databases.1.name",
        ),
        (
            "database.write_databases.1.table_names.experiments",
            "a/b",
            "database.write_databases.1.table_names.experiments",
        ),
        (
            "database.write_databases.1.table_names.models",
            "__x__",
            "database.write_databases.1.table_names.models",
        ),
        (
            "database.write_databases.1.table_names.batches",
            "",
            "database.write_databases.1.table_names.batches",
        ),
        (
            "database.write_databases.1.table_names.batches",
            "..",
            "database.write_databases.1.table_names.batches",
        ),
        (
            "database.write_databases.1.table_names.batches",
            "x" * 1501,
            "database.write_databases.1.table_names.batches",
        ),
        (
            "database.write_databases.1.emulator_host",
            "localhost",
            "database.write_databases.1.emulator_host",
        ),
        (
            "database.write_databases.1.firebase_service_key_path",
            "/etc/keys/service.json",
            "database.write_databases.1.firebase_service_key_path",
        ),
    ],
)
def test_invalid_value_raises_config_error_naming_the_key(
    seed_dict: dict[str, Any], dotted: str, value: Any, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_set(seed_dict, dotted, value))

    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")


def test_spill_without_spool_path_names_spool_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"writer": {"on_full": "spill"}})

    assert info.value.key == "writer.spool_path"
    cfg = load_config({"writer": {"on_full": "spill", "spool_path": "spool.jsonl"}})
    assert cfg.writer.spool_path == "spool.jsonl"


def test_read_database_must_be_a_write_database() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"database": {"read_database": "firestore"}})

    assert info.value.key == "database.read_database"
    assert "'local'" in str(info.value)


def test_unknown_database_name_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"database": {"write_databases": [{"name": "mongo"}]}})

    assert info.value.key == "database.write_databases.0"
    assert "'local'" in str(info.value) and "'firestore'" in str(info.value)


def test_unknown_key_lists_the_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"writer": {"queue_sise": 5}})

    assert info.value.key == "writer.queue_sise"
    assert "queue_size" in str(info.value)


def test_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.key == ""
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["wandb: [unclosed\n", "writer:\n  queue_size: 1\n queue_size: 2\n", "- a\n- b\n", "42\n"],
)
def test_unparseable_or_non_mapping_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "system.yaml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError):
        load_config(path)


def test_duplicate_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "system.yaml"
    path.write_text("writer:\n  queue_size: 1\nwriter:\n  queue_size: 2\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert info.value.key == "writer"


def test_other_source_types_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        load_config(42)  # type: ignore[arg-type]


def test_mode_resolves_to_offline_without_the_api_key_variable() -> None:
    assert load_config().wandb.resolved_mode == "offline"


def test_mode_resolves_to_online_with_the_named_api_key_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_config({"wandb": {"api_key": "MY_WANDB_KEY"}})
    assert cfg.wandb.resolved_mode == "offline"

    monkeypatch.setenv("MY_WANDB_KEY", "")
    assert cfg.wandb.resolved_mode == "offline"

    monkeypatch.setenv("MY_WANDB_KEY", SECRET)
    assert cfg.wandb.resolved_mode == "online"
    assert cfg.wandb.api_key_value() == SECRET


def test_explicit_mode_wins_over_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)

    assert load_config({"wandb": {"mode": "disabled"}}).wandb.resolved_mode == "disabled"
    assert load_config({"wandb": {"mode": "offline"}}).wandb.resolved_mode == "offline"


def test_credentials_path_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FirestoreDatabaseConfig(firebase_service_key_path="MY_KEY_FILE")
    assert fs.credentials_path() is None

    monkeypatch.setenv("MY_KEY_FILE", "/keys/service.json")
    assert fs.credentials_path() == "/keys/service.json"


def test_firestore_without_emulator_or_credentials_still_loads() -> None:
    cfg = load_config(
        {"database": {"read_database": "firestore", "write_databases": [{"name": "firestore"}]}}
    )

    fs = cfg.read_db
    assert isinstance(fs, FirestoreDatabaseConfig)
    assert fs.resolved_emulator_host is None
    assert fs.credentials_path() is None


def test_emulator_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = FirestoreDatabaseConfig()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8080")

    assert fs.resolved_emulator_host == "127.0.0.1:8080"
    assert FirestoreDatabaseConfig(emulator_host="emu:9000").resolved_emulator_host == "emu:9000"


def _every_config_error(seed_dict: dict[str, Any]) -> list[ConfigError]:
    bad = [
        _set(seed_dict, "wandb.api_key", SECRET),
        _set(seed_dict, "wandb.api_key", "0123456789abcdef" * 3),
        _set(seed_dict, "database.write_databases.1.firebase_service_key_path", SECRET),
        _set(seed_dict, "wandb.mode", SECRET),
        _set(seed_dict, "writer.queue_size", SECRET),
        _set(seed_dict, "database.write_databases.1.project", 5),
    ]
    errors = []
    for data in bad:
        with pytest.raises(ConfigError) as info:
            load_config(data)
        errors.append(info.value)
    return errors


def test_secret_values_never_appear_in_errors_or_redacted_dump(
    monkeypatch: pytest.MonkeyPatch, seed_dict: dict[str, Any]
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("FIREBASE_CONFIG_FILE", SECRET + "-path")

    for error in _every_config_error(seed_dict):
        assert SECRET not in str(error)
        assert SECRET not in repr(error.args)
    assert "0123456789abcdef" not in str(_every_config_error(seed_dict)[1])

    cfg = load_config(seed_dict)
    dumped = redacted(cfg)
    assert SECRET not in repr(dumped)
    assert dumped["wandb"]["api_key"] == "WANDB_API_KEY"
    assert dumped["database"]["write_databases"][1]["firebase_service_key_path"] == (
        "FIREBASE_CONFIG_FILE"
    )


def test_redacted_replaces_any_string_holding_a_secret_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A user who stores the key where a name belongs (here in the W&B run directory)
    # still never sees it logged.
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    cfg = load_config({"wandb": {"dir": f"/runs/{SECRET}"}})

    dumped = redacted(cfg)

    assert SECRET not in repr(dumped)
    assert dumped["wandb"]["dir"] == "<redacted>"
    assert yaml.safe_dump(dumped)  # plain data, fit for logging
