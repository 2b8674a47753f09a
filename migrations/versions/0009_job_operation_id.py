"""jobs.operation_id: the operation (trigger) a job came from, filled in for existing jobs

Revision ID: 0009_job_operation_id
Revises: 0008_error_details
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_job_operation_id"
down_revision: str | None = "0008_error_details"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("operation_id", sa.String(length=200), nullable=True))
    op.execute(
        "UPDATE jobs SET operation_id = (SELECT operations.operation_id FROM operations"
        " WHERE operations.pk = jobs.operation_pk) WHERE operation_pk IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("operation_id")
