"""replicas: subscription leases (owner, epoch, expiry) and each instance's learned budgets

Revision ID: 0007_replicas
Revises: 0006_discovery
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_replicas"
down_revision: str | None = "0006_discovery"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "subscription_leases",
        sa.Column("subscription_key", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subscription_key", name=op.f("pk_subscription_leases")),
    )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("budgets", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("budgets")
    op.drop_table("subscription_leases")
