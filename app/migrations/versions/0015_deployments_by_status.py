"""deployments indexed by status: what is still queued or running (a live log's place in the
queue, polled twice a second per open stream) read from the index, not by scanning all history

Revision ID: 0015_deployments_by_status
Revises: 0014_service_node
Create Date: 2026-12-02 05:00:00.000000
"""
from alembic import op


revision = '0015_deployments_by_status'
down_revision = '0014_service_node'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_deployments_status', 'deployments', ['status', 'id'])


def downgrade() -> None:
    op.drop_index('ix_deployments_status', table_name='deployments')
