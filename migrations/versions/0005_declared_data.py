"""declared data: a dataset's feature declaration, a subject per sample, subjects named by requests

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("features", sa.JSON(), nullable=True))
    with op.batch_alter_table("dataset_samples") as batch:
        batch.add_column(sa.Column("subject_id", sa.String(length=200), nullable=True))
    op.create_index(
        "ix_dataset_samples_subject", "dataset_samples", ["dataset_id", "subject_id"], unique=False
    )
    with op.batch_alter_table("deletion_requests") as batch:
        batch.add_column(sa.Column("subject_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests") as batch:
        batch.drop_column("subject_ids")
    op.drop_index("ix_dataset_samples_subject", table_name="dataset_samples")
    with op.batch_alter_table("dataset_samples") as batch:
        batch.drop_column("subject_id")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("features")
