"""NWB/DANDI metadata: subject, array device, electrode position, session metadata, stop times

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sex", sa.String(length=1), server_default="U", nullable=False))
        for name, length in (("age", 40), ("date_of_birth", 40), ("weight", 40), ("strain", 120)):
            batch_op.add_column(sa.Column(name, sa.String(length=length), server_default="", nullable=False))
    with op.batch_alter_table("arrays", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("manufacturer", sa.String(length=200), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("description", sa.String(), server_default="", nullable=False))
    with op.batch_alter_table("sites", schema=None) as batch_op:
        for name in ("x", "y", "z"):
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("location", sa.String(length=60), server_default="", nullable=False))
    with op.batch_alter_table("recording_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_start_time", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("description", sa.String(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("experimenter", JSONType, server_default="[]", nullable=False))
        batch_op.add_column(
            sa.Column("institution", sa.String(length=200), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("lab", sa.String(length=200), server_default="", nullable=False))
        batch_op.add_column(sa.Column("keywords", JSONType, server_default="[]", nullable=False))
        batch_op.add_column(sa.Column("acquisition", JSONType, server_default="{}", nullable=False))
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stop_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("presentations", schema=None) as batch_op:
        batch_op.drop_column("stop_s")
    with op.batch_alter_table("recording_sessions", schema=None) as batch_op:
        for name in (
            "acquisition",
            "keywords",
            "lab",
            "institution",
            "experimenter",
            "description",
            "session_start_time",
        ):
            batch_op.drop_column(name)
    with op.batch_alter_table("sites", schema=None) as batch_op:
        for name in ("location", "z", "y", "x"):
            batch_op.drop_column(name)
    with op.batch_alter_table("arrays", schema=None) as batch_op:
        for name in ("description", "manufacturer", "device"):
            batch_op.drop_column(name)
    with op.batch_alter_table("subjects", schema=None) as batch_op:
        for name in ("strain", "weight", "date_of_birth", "age", "sex"):
            batch_op.drop_column(name)
