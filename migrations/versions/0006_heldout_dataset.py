"""a model's own held-out set: the data its unlearning calibrates on, apart from the data it is graded on

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("heldout_dataset_id", sa.String(length=36), nullable=True))
        batch.create_foreign_key(
            "fk_models_heldout_dataset_id_datasets", "datasets", ["heldout_dataset_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("fk_models_heldout_dataset_id_datasets", type_="foreignkey")
        batch.drop_column("heldout_dataset_id")
