"""the Swarm node a backing service's volume lives on (RUNTIME=swarm pins the service there)

Revision ID: 0014_service_node
Revises: 0013_deployments_by_phase
Create Date: 2026-12-02 04:40:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0014_service_node'
down_revision = '0013_deployments_by_phase'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('services') as batch:
        batch.add_column(sa.Column('node', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('services') as batch:
        batch.drop_column('node')
