"""audit_events.entity_id widened to 200 characters: a version's events name it `<model name>/v<number>`,
and a model name may have 100 (on PostgreSQL a 98-character name failed every publish)

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column(
            "entity_id", existing_type=sa.String(100), type_=sa.String(200), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column(
            "entity_id", existing_type=sa.String(200), type_=sa.String(100), existing_nullable=False
        )
