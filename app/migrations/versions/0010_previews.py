"""previews: one row per pull request preview (README, Pull request previews)

Revision ID: 0010_previews
Revises: 0012_commit_titles
"""

import sqlalchemy as sa
from alembic import op

revision = '0010_previews'
down_revision = '0012_commit_titles'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "previews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app_id", sa.Integer, sa.ForeignKey("apps.id"), nullable=False, index=True),
        sa.Column("pr_number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("head_repo", sa.String(200), nullable=True),
        sa.Column("fork", sa.Boolean, nullable=False),
        sa.Column("event_at", sa.String(40), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("app_id", "pr_number"),
    )


def downgrade() -> None:
    op.drop_table("previews")
