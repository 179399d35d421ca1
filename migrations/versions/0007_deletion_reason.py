"""a deletion request's reason: erasure (the labels are right) or mislabeled (they are wrong), which
decides how its samples are unlearned

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_requests") as batch:
        batch.add_column(
            sa.Column("reason", sa.String(length=20), nullable=False, server_default="erasure")
        )


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests") as batch:
        batch.drop_column("reason")
