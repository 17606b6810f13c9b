"""stop timeout: seconds from SIGTERM to SIGKILL, a profile sizing field

Revision ID: 0004_stop_timeout
Revises: 0006_notifications
Create Date: 2026-12-01 21:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004_stop_timeout'
down_revision = '0006_notifications'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('profiles') as batch:
        batch.add_column(sa.Column('stop_timeout', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('profiles') as batch:
        batch.drop_column('stop_timeout')
