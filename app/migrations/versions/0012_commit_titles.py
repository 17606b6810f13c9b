"""commit title and author on deployments (from the push payload), shown on deployments and history

Revision ID: 0012_commit_titles
Revises: 0005_release_controls
Create Date: 2026-12-02 01:40:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0012_commit_titles'
down_revision = '0005_release_controls'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('commit_title', sa.String(length=200), nullable=True))
        batch.add_column(sa.Column('commit_author', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('commit_author')
        batch.drop_column('commit_title')
