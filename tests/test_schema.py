"""The state store's schema: Alembic migrations, `elasticcode db upgrade`, the embedded state
upgraded on open, and a shared database at an older schema refused with what to run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from elasticcode.errors import StateError
from elasticcode.store import StateStore, schema
from elasticcode.store.tables import metadata

from .network import ELASTICCODE, postgres_database


def test_an_embedded_state_from_before_migrations_is_upgraded_and_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", "elasticcode.store:migrations")
    with engine.begin() as db:  # the first schema, with no version: as an early version made it
        config.attributes["connection"] = db
        command.upgrade(config, "0001")
        db.execute(sa.text("DROP TABLE alembic_version"))
    with engine.begin() as db:
        db.execute(metadata.tables["runs"].insert().values(flow="f", status="running", started=1.0))
    assert schema.current(engine) == "0001"
    store = StateStore(url)
    assert schema.current(store.engine) == schema.HEAD
    assert store.last_run("f") == (1, "running")  # what was there is kept
    names = set(sa.inspect(store.engine).get_table_names())
    assert {"flows", "agents", "placements", "leases", "alembic_version"} <= names
    store.close()
    engine.dispose()


def test_a_shared_database_is_upgraded_only_by_the_command() -> None:
    for url in postgres_database():
        with pytest.raises(StateError, match=r"run `elasticcode db upgrade --db"):
            StateStore(url)
        done = subprocess.run(
            [ELASTICCODE, "db", "upgrade", "--db", url], capture_output=True, text=True
        )
        assert done.returncode == 0 and f"to schema revision {schema.HEAD}" in done.stdout
        again = subprocess.run(
            [ELASTICCODE, "db", "upgrade", "--db", url], capture_output=True, text=True
        )
        assert "nothing to do" in again.stdout
        StateStore(url).close()
    missing = subprocess.run(
        [ELASTICCODE, "db", "upgrade", "--db", "postgresql://postgres@127.0.0.1:1/nope"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "cannot upgrade" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_newest_migration_makes_the_tables_the_code_defines(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    with store.engine.connect() as db:
        diff = compare_metadata(MigrationContext.configure(db), metadata)
    store.close()
    # server defaults and SQLite's view of types aside, every table, column and index matches
    assert [d for d in diff if d[0] in ("add_table", "remove_table", "add_column",
                                        "remove_column", "add_index", "remove_index")] == []  # fmt: skip
