"""Run Alembic from code, so `itloop db upgrade` works from any folder and in tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option(
        "file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s"
    )
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def check(url: str | None = None) -> None:
    """Raise if the ORM models and the migrations disagree."""
    command.check(alembic_config(url))


# --- schema state --------------------------------------------------------------------------

SchemaState = Literal["current", "behind", "missing", "unknown"]
SCHEMA_STATES: tuple[str, ...] = ("current", "behind", "missing", "unknown")


@lru_cache(maxsize=1)
def code_heads() -> frozenset[str]:
    """The head revision(s) this code's migrations lead to (read once: the files do not change)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


@lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(rev.revision for rev in script.walk_revisions())


def database_revisions(url: str) -> frozenset[str] | None:
    """The revision(s) stamped in the database; None when it has no schema at all.

    A SQLite file that does not exist yet has no schema: it is not created by asking.
    """
    from server.db.engine import get_engine

    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not Path(path).exists():
            return None
    with get_engine(url).connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return frozenset(heads) or None


def schema_state(url: str) -> SchemaState:
    """Whether the database's schema is the one this code expects, so callers can say what to run.

    ``current``: at this code's head. ``behind``: an older revision (``itloop db upgrade``).
    ``missing``: no schema (never upgraded). ``unknown``: a revision this code does not know
    (a newer release migrated it; run that release, or downgrade with it). Raises SQLAlchemy's
    ``OperationalError`` when the database cannot be reached at all.
    """
    revisions = database_revisions(url)
    if revisions is None:
        return "missing"
    if revisions == code_heads():
        return "current"
    if revisions <= _known_revisions():
        return "behind"
    return "unknown"


def schema_advice(state: str) -> str:
    """What a person should do about a schema state, in one sentence."""
    return {
        "current": "the database schema is current",
        "behind": "the database schema is older than this code: run `itloop db upgrade`",
        "missing": "the database has no schema yet: run `itloop db upgrade`",
        "unknown": "the database was migrated by a newer itloop than this one (a revision this code "
        "does not know): run the newer release, or downgrade the schema with it",
    }.get(state, f"unexpected schema state {state!r}")
