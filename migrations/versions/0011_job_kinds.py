"""jobs.vault_kind and jobs.region, operations.region: Backup vault and cross-region-restore jobs

Every job so far was a Recovery Services vault's, in no secondary region.

Revision ID: 0011_job_kinds
Revises: 0010_progress
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_job_kinds"
down_revision: str | None = "0010_progress"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column(
                "vault_kind", sa.String(32), nullable=False, server_default="RecoveryServices"
            )
        )
        batch.add_column(sa.Column("region", sa.String(64), nullable=True))
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("region", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("region")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("region")
        batch.drop_column("vault_kind")
