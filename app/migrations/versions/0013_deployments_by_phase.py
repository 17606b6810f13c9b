"""deployments indexed by app, phase and status: the newest of each kind per phase (the apps
list, the board, what a phase serves) read from the index, not by scanning an app's history

Revision ID: 0013_deployments_by_phase
Revises: 0010_previews
Create Date: 2026-12-02 04:45:00.000000
"""
from alembic import op


revision = '0013_deployments_by_phase'
down_revision = '0010_previews'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_deployments_app_phase_status', 'deployments', ['app_id', 'phase', 'status', 'id'])


def downgrade() -> None:
    op.drop_index('ix_deployments_app_phase_status', table_name='deployments')
