"""one active night per session (partial unique index); worker liveness in the database

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 14:20:00

Before the index can exist, a database that already holds several active nights for one
session (concurrent starts, before this revision) keeps the oldest and fails the others,
cancelling their unfinished jobs, as a failed night does.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "state IN ('queued', 'running', 'waiting')"


def upgrade() -> None:
    _fail_duplicate_active_nights()
    with op.batch_alter_table("nights", schema=None) as batch_op:
        batch_op.create_index(
            "uq_nights_active_session",
            ["session_pk"],
            unique=True,
            sqlite_where=sa.text(ACTIVE),
            postgresql_where=sa.text(ACTIVE),
        )
    op.create_table(
        "worker_beats",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("queues", sa.String(length=400), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_beats")),
    )
    with op.batch_alter_table("worker_beats", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_beats_seen_at"), ["seen_at"], unique=False)


def _fail_duplicate_active_nights() -> None:
    conn = op.get_bind()
    dupes = conn.execute(
        sa.text(
            f"SELECT n.id FROM nights n WHERE n.{ACTIVE} AND EXISTS (SELECT 1 FROM nights o "
            f"WHERE o.session_pk = n.session_pk AND o.{ACTIVE} AND o.id < n.id)"
        )
    ).scalars()
    ids = list(dupes)
    if not ids:
        return
    now = datetime.now(UTC)
    stamp = sa.DateTime(timezone=True)
    nights = sa.table(
        "nights", sa.column("id"), sa.column("state"), sa.column("error"), sa.column("finished_at", stamp)
    )
    jobs = sa.table(
        "jobs",
        sa.column("night_id"),
        sa.column("state"),
        sa.column("error"),
        sa.column("finished_at", stamp),
        sa.column("cancel_requested", sa.Boolean()),
    )
    conn.execute(
        nights.update()
        .where(nights.c.id.in_(ids))
        .values(state="failed", error="another night of this session was already active", finished_at=now)
    )
    conn.execute(
        jobs.update()
        .where(jobs.c.night_id.in_(ids), jobs.c.state.in_(("queued", "waiting")))
        .values(state="cancelled", error="night failed", finished_at=now, cancel_requested=True)
    )
    conn.execute(
        jobs.update().where(jobs.c.night_id.in_(ids), jobs.c.state == "running").values(cancel_requested=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("worker_beats", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worker_beats_seen_at"))
    op.drop_table("worker_beats")
    with op.batch_alter_table("nights", schema=None) as batch_op:
        batch_op.drop_index("uq_nights_active_session")
