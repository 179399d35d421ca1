"""hardening: dataset file hashes, per-tenant webhook secrets, per-model job time limits

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("time_limit_seconds", sa.Integer(), nullable=True))
    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_secrets")),
    )
    op.create_index(op.f("ix_webhook_secrets_tenant"), "webhook_secrets", ["tenant"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_secrets_tenant"), table_name="webhook_secrets")
    op.drop_table("webhook_secrets")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("time_limit_seconds")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("sha256")
