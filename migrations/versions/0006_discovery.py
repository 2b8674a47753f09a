"""discovery_state: per vault, how far job discovery has listed (restarts continue from there)

Revision ID: 0006_discovery
Revises: 0005_sweeps
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_discovery"
down_revision: str | None = "0005_sweeps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "discovery_state",
        sa.Column("vault_key", sa.String(length=300), nullable=False),
        sa.Column("vault_id", sa.String(length=300), nullable=False),
        sa.Column("last_listed_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jobs_found", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("vault_key", name=op.f("pk_discovery_state")),
    )


def downgrade() -> None:
    op.drop_table("discovery_state")
