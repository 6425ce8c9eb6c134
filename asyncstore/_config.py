"""The system configuration (the seed's ``system.yaml``), validated.

``load_config`` accepts a mapping, a path to a YAML file, an already validated
``SystemConfig`` or ``None`` (all defaults) and returns a frozen ``SystemConfig``.
Every invalid value raises ``ConfigError`` whose ``key`` is the dotted path of the
first bad value (``"writer.queue_size"``, ``"database.write_databases.1.data_resolution"``).

Secrets never live in the configuration: ``wandb.api_key`` and
``firebase_service_key_path`` hold the *names* of environment variables, read only when
a backend needs them. Input values are never echoed in error messages
(``hide_input_in_errors``), so a key pasted into the wrong field does not reach a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._exceptions import ConfigError

__all__ = [
    "DatabaseConfig",
    "FirestoreDatabaseConfig",
    "LocalDatabaseConfig",
    "RetryConfig",
    "SystemConfig",
    "TableNames",
    "WandbConfig",
    "WriteDatabaseConfig",
    "WriterConfig",
    "load_config",
    "redacted",
    "write_database",
]

DATABASE_NAMES = ("local", "firestore")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A W&B API key is a long run of hex digits; refuse one given where a variable name belongs.
_LOOKS_LIKE_KEY = re.compile(r"[0-9a-fA-F]{32,}")
_RESERVED_ID = re.compile(r"__.*__", re.DOTALL)
_WANDB_PROJECT_FORBIDDEN = set("/\\#?%:")
_REDACTED = "<redacted>"


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("config", message)


def _problem_at(subkey: str, message: str) -> PydanticCustomError:
    """A problem found by a model-level check, reported at ``subkey`` below the model."""
    return PydanticCustomError("config_key", message, {"subkey": subkey})


def _exact_int(value: Any) -> Any:
    # Literal[0, 1, 2] alone accepts True and 1.0 even in strict mode.
    if type(value) is not int:
        raise _problem("Input should be an integer: 0, 1 or 2")
    return value


Resolution = Annotated[Literal[0, 1, 2], BeforeValidator(_exact_int)]


def _env_name(value: str, example: str, what: str) -> str:
    if _LOOKS_LIKE_KEY.fullmatch(value):
        raise _problem(
            f"looks like a secret itself; give the name of an environment variable "
            f"that holds {what} (such as {example})"
        )
    if not _ENV_NAME.fullmatch(value):
        raise _problem(
            f"must be the name of an environment variable that holds {what} "
            f"(such as {example}), not the value itself"
        )
    return value


def _env_value(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


class _Model(BaseModel):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key not in cls.model_fields:
                allowed = ", ".join(sorted(cls.model_fields))
                raise _problem_at(str(key), f"unknown key; allowed keys here: {allowed}")
        # An empty YAML section (``writer:`` with every line commented out) means defaults.
        return {
            key: value
            for key, value in data.items()
            if not (value is None and cls.model_fields[key].default_factory is not None)
        }


class WandbConfig(_Model):
    """Weights & Biases settings."""

    api_key: str = "WANDB_API_KEY"
    project_name: str = "sparsey_project"
    mode: Literal["online", "offline", "disabled"] | None = None
    data_resolution: Resolution = 2
    save_models: bool = True
    entity: str | None = None
    dir: str | None = None

    @field_validator("api_key")
    @classmethod
    def _api_key_is_a_name(cls, value: str) -> str:
        return _env_name(value, "WANDB_API_KEY", "the W&B API key")

    @field_validator("project_name")
    @classmethod
    def _project_name(cls, value: str) -> str:
        if not value:
            raise _problem("must not be empty")
        if len(value) > 128 or _WANDB_PROJECT_FORBIDDEN & set(value):
            raise _problem("must be at most 128 characters, none of / \\ # ? % :")
        return value

    @field_validator("entity", "dir")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise _problem("must not be empty (leave it out or null for the default)")
        return value

    def api_key_value(self) -> str | None:
        """The W&B API key from the environment variable named by ``api_key``, or None."""
        return _env_value(self.api_key)

    @property
    def resolved_mode(self) -> Literal["online", "offline", "disabled"]:
        """``mode``, or when unset: ``online`` if the API key variable is set, else ``offline``."""
        if self.mode is not None:
            return self.mode
        return "online" if self.api_key_value() else "offline"


def _collection_id(value: str) -> str:
    if not value:
        raise _problem("must not be empty")
    if "/" in value:
        raise _problem("must not contain '/'")
    if value in (".", ".."):
        raise _problem("must not be '.' or '..'")
    if _RESERVED_ID.fullmatch(value):
        raise _problem("must not match __.*__ (reserved by Firestore)")
    if len(value.encode("utf-8")) > 1500:
        raise _problem("must be at most 1500 bytes in UTF-8")
    return value


class TableNames(_Model):
    """Collection names; each must be a valid Firestore collection id."""

    experiments: str = "experiments"
    hpo_runs: str = "hpo_runs"
    batches: str = "batches"
    models: str = "models"
    model_registry: str = "model_registry"
    blobs: str = "blobs"

    @field_validator("*")
    @classmethod
    def _valid_collection_id(cls, value: str) -> str:
        return _collection_id(value)


class LocalDatabaseConfig(_Model):
    """The embedded store: one file on disk."""

    name: Literal["local"] = "local"
    path: str = "asyncstore.db"
    data_resolution: Resolution = 2
    save_models: bool = True
    table_names: TableNames = Field(default_factory=TableNames)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value:
            raise _problem("must not be empty")
        return value


class FirestoreDatabaseConfig(_Model):
    """Google Cloud Firestore (or its emulator)."""

    name: Literal["firestore"] = "firestore"
    project: str = "asyncstore-local"
    firebase_service_key_path: str = "FIREBASE_CONFIG_FILE"
    emulator_host: str | None = None
    data_resolution: Resolution = 2
    save_models: bool = False
    database: str = "(default)"
    table_names: TableNames = Field(default_factory=TableNames)

    @field_validator("firebase_service_key_path")
    @classmethod
    def _key_path_is_a_name(cls, value: str) -> str:
        return _env_name(value, "FIREBASE_CONFIG_FILE", "the service key file path")

    @field_validator("project", "database")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise _problem("must not be empty")
        return value

    @field_validator("emulator_host")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise _problem("must be host:port, such as localhost:8080")
        return value

    @property
    def resolved_emulator_host(self) -> str | None:
        """``emulator_host``, else ``$FIRESTORE_EMULATOR_HOST``, else None."""
        return self.emulator_host or _env_value("FIRESTORE_EMULATOR_HOST")

    def credentials_path(self) -> str | None:
        """The key file path from the variable named by ``firebase_service_key_path``."""
        return _env_value(self.firebase_service_key_path)


WriteDatabaseConfig = Annotated[
    LocalDatabaseConfig | FirestoreDatabaseConfig, Field(discriminator="name")
]


class DatabaseConfig(_Model):
    """Data goes to every write database; reads come from ``read_database``."""

    read_database: str = "local"
    write_databases: tuple[WriteDatabaseConfig, ...] = Field(
        default_factory=lambda: (LocalDatabaseConfig(),)
    )

    @field_validator("write_databases", mode="before")
    @classmethod
    def _sequence(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not value:
            raise _problem("at least one write database is required")
        return value

    @model_validator(mode="after")
    def _names(self) -> DatabaseConfig:
        seen: set[str] = set()
        for index, db in enumerate(self.write_databases):
            if db.name in seen:
                raise _problem_at(
                    f"write_databases.{index}.name",
                    f"duplicate write database {db.name!r}; each may appear once",
                )
            seen.add(db.name)
        if self.read_database not in seen:
            choices = ", ".join(repr(db.name) for db in self.write_databases)
            raise _problem_at(
                "read_database",
                f"must name one of the write databases: {choices}",
            )
        return self


class RetryConfig(_Model):
    """Retry policy for transient backend failures (exponential back-off)."""

    attempts: int = Field(default=10, ge=1)
    initial: float = Field(default=0.1, gt=0)
    max_wait: float = Field(default=10.0, gt=0)
    deadline: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_wait < self.initial:
            raise _problem_at("max_wait", "must be at least retry.initial")
        return self


class WriterConfig(_Model):
    """The background writer: queue bound, batching, back-pressure, spool, retries."""

    queue_size: int = Field(default=10000, ge=1)
    flush_interval: float = Field(default=0.25, gt=0)
    on_full: Literal["block", "spill"] = "block"
    spool_path: str | None = None
    exit_grace_period: float = Field(default=30.0, ge=0)
    max_batch_steps: int = Field(default=1000, ge=1)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("spool_path")
    @classmethod
    def _spool_path(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise _problem("must not be empty (null for no spool)")
        return value

    @model_validator(mode="after")
    def _spill_needs_spool(self) -> WriterConfig:
        if self.on_full == "spill" and self.spool_path is None:
            raise _problem_at("spool_path", "on_full 'spill' needs a spool_path")
        return self


class SystemConfig(_Model):
    """The whole validated system configuration."""

    wandb: WandbConfig = Field(default_factory=WandbConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    writer: WriterConfig = Field(default_factory=WriterConfig)

    @property
    def read_db(self) -> LocalDatabaseConfig | FirestoreDatabaseConfig:
        """The configuration of ``database.read_database``."""
        db = write_database(self, self.database.read_database)
        assert db is not None  # guaranteed by DatabaseConfig's validation
        return db

    @property
    def write_dbs(self) -> tuple[LocalDatabaseConfig | FirestoreDatabaseConfig, ...]:
        """Every write database, in configured order."""
        return self.database.write_databases


def write_database(
    cfg: SystemConfig, name: str
) -> LocalDatabaseConfig | FirestoreDatabaseConfig | None:
    """The write database called ``name`` (``"local"`` or ``"firestore"``), or None."""
    for db in cfg.database.write_databases:
        if db.name == name:
            return db
    return None


# ---------------------------------------------------------------------------- loading


def _plain(value: Any) -> Any:
    """Mappings to dicts and tuples to lists, recursively, so strict validation sees YAML shapes."""
    if isinstance(value, BaseModel):
        return value
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _key_of(error: Mapping[str, Any]) -> str:
    loc: list[Any] = []
    for part in error["loc"]:
        # A discriminated union inserts the tag into the location: drop it, so the key is
        # the path a user wrote (database.write_databases.1.path, not ...1.local.path).
        if (
            len(loc) >= 2
            and loc[-2] == "write_databases"
            and isinstance(loc[-1], int)
            and part in DATABASE_NAMES
        ):
            continue
        loc.append(part)
    if error["type"] == "config_key":
        loc.extend(str(error["ctx"]["subkey"]).split("."))
    return ".".join(str(part) for part in loc)


def _message_of(error: Mapping[str, Any]) -> str:
    names = ", ".join(repr(name) for name in DATABASE_NAMES)
    if error["type"] == "union_tag_invalid":
        return f"unknown database name {error['ctx']['tag']!r}; allowed names: {names}"
    if error["type"] == "union_tag_not_found":
        return f"each write database needs a 'name': one of {names}"
    return str(error["msg"])


def _config_error(exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False, include_input=False)
    first, rest = errors[0], errors[1:]
    message = _message_of(first)
    if rest:
        others = "; ".join(f"{_key_of(e)}: {_message_of(e)}" for e in rest[:5])
        more = f"; and {len(rest) - 5} more" if len(rest) > 5 else ""
        message = f"{message} (also invalid: {others}{more})"
    return ConfigError(_key_of(first), message)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (the last would win silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str) and key in seen:
            raise ConfigError(
                str(key),
                f"duplicate key at line {key_node.start_mark.line + 1}",
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"configuration file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read configuration file {path}: {exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: the parser's snippet could show a secret
        # pasted into the file.
        where = ""
        if exc.problem_mark is not None:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError("", f"invalid YAML in {path}{where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError("", f"invalid YAML in {path}") from None


def load_config(
    source: Mapping[str, Any] | str | os.PathLike[str] | SystemConfig | None = None,
) -> SystemConfig:
    """Validate a system configuration.

    :param source: a mapping in the ``system.yaml`` shape, a path to such a YAML file,
        a ``SystemConfig`` (returned as is) or None (every default).
    :raises ConfigError: naming the dotted key of the first invalid value ("" for a
        file that is missing or not YAML).
    :raises TypeError: for a ``source`` of another type.
    """
    if source is None:
        return SystemConfig()
    if isinstance(source, SystemConfig):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        data = _read_yaml(path)
        if data is None:  # an empty file: every default
            return SystemConfig()
        if not isinstance(data, Mapping):
            raise ConfigError(
                "", f"{path} must hold a mapping at the top level, not {type(data).__name__}"
            )
    elif isinstance(source, Mapping):
        data = source
    else:
        raise TypeError(
            "configuration must be a mapping, a path to a YAML file, a SystemConfig or "
            f"None, not {type(source).__name__}"
        )
    try:
        return SystemConfig.model_validate(_plain(data))
    except ValidationError as exc:
        raise _config_error(exc) from None


# ---------------------------------------------------------------------------- logging


def _secret_values(cfg: SystemConfig) -> set[str]:
    secrets = {cfg.wandb.api_key_value()}
    for db in cfg.database.write_databases:
        if isinstance(db, FirestoreDatabaseConfig):
            secrets.add(db.credentials_path())
    return {s for s in secrets if s}


def _scrub(value: Any, secrets: set[str]) -> Any:
    if isinstance(value, dict):
        return {key: _scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, secrets) for item in value]
    if isinstance(value, str) and any(
        value == s or (len(s) >= 8 and s in value) for s in secrets
    ):
        return _REDACTED
    return value


def redacted(cfg: SystemConfig) -> dict[str, Any]:
    """``cfg`` as plain data that is safe to log or store.

    The configuration holds only the *names* of the secret variables; as a guard, any
    string equal to (or containing) the value of one of them is replaced by
    ``"<redacted>"``.
    """
    dumped: dict[str, Any] = _scrub(cfg.model_dump(mode="python"), _secret_values(cfg))
    return dumped

