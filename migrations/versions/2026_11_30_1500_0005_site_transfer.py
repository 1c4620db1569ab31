"""per-site transfer evidence and per-site surrogate choice

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLOATS = ("transfer_slope", "transfer_r_low", "transfer_r_high", "transfer_sign_low", "transfer_sign_high")


def upgrade() -> None:
    with op.batch_alter_table("site_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transfer_n", sa.Integer(), nullable=True))
        for name in _FLOATS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("chosen_for_site", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("choice_reason", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("site_metrics", schema=None) as batch_op:
        for name in ("choice_reason", "chosen_for_site", *reversed(_FLOATS), "transfer_n"):
            batch_op.drop_column(name)
