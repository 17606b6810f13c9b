"""app deletion: a deleted app keeps its history, marked by when and by whom it was deleted

Revision ID: 0008_app_deletion
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0008_app_deletion'
down_revision = '0007_api_tokens'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_by", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("deleted_by")
        batch.drop_column("deleted_at")
