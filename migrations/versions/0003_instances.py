"""instances: running daemons and their heartbeats (so `wait` knows whether one is polling)

Revision ID: 0003_instances
Revises: 0002_stuck_since
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_instances"
down_revision: str | None = "0002_stuck_since"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instances")),
    )


def downgrade() -> None:
    op.drop_table("instances")
