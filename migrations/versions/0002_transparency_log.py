"""audit trail as a transparency log: events sequenced after the fact, Merkle nodes, signed tree heads;
models remember when a worker was last woken for them

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.add_column(sa.Column("leaf_hash", sa.String(length=64), nullable=True))
    op.create_table(
        "audit_nodes",
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "level", "idx", name=op.f("pk_audit_nodes")),
    )
    op.create_table(
        "audit_heads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("tree_size", sa.Integer(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.String(length=40), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_heads")),
    )
    with op.batch_alter_table("audit_heads", schema=None) as batch_op:
        batch_op.create_index("ix_audit_heads_tenant_id", ["tenant", "id"], unique=False)
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("woken_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("woken_at")
    with op.batch_alter_table("audit_heads", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_heads_tenant_id")
    op.drop_table("audit_heads")
    op.drop_table("audit_nodes")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("leaf_hash")
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("seq", existing_type=sa.Integer(), nullable=False)
