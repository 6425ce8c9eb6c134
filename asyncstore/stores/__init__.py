"""Document stores: one module per backend, each importing its SDK alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._config import FirestoreDatabaseConfig, LocalDatabaseConfig


def open_store(cfg: LocalDatabaseConfig | FirestoreDatabaseConfig):  # type: ignore[no-untyped-def]
    """The document store (writer and reader side) for one configured database."""
    if cfg.name == "local":
        from .local import LocalStore

        return LocalStore(cfg.path, cfg.table_names.model_dump(), save_models=cfg.save_models)
    from .firestore import FirestoreStore

    return FirestoreStore(cfg)
