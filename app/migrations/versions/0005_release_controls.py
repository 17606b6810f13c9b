"""release controls: ad-hoc phase freezes; what a deployment ships, its override, its cancel

Revision ID: 0005_release_controls
Revises: 0004_stop_timeout
Create Date: 2026-12-01 21:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0005_release_controls'
down_revision = '0004_stop_timeout'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('phase_freezes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=40), nullable=False),
    sa.Column('author', sa.String(length=100), nullable=False),
    sa.Column('reason', sa.String(length=300), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('app_id', 'phase')
    )
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('commits', sa.JSON(), nullable=False, server_default='[]'))
        batch.add_column(sa.Column('override', sa.String(length=300), nullable=True))
        batch.add_column(sa.Column('cancel_requested_by', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deployments') as batch:
        batch.drop_column('cancel_requested_by')
        batch.drop_column('override')
        batch.drop_column('commits')
    op.drop_table('phase_freezes')
