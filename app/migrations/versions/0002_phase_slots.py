"""phase slots: two fixed loopback ports per app and phase

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('phase_slots',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=40), nullable=False),
    sa.Column('port_a', sa.Integer(), nullable=False),
    sa.Column('port_b', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('app_id', 'phase'),
    sa.UniqueConstraint('port_a'),
    sa.UniqueConstraint('port_b')
    )


def downgrade() -> None:
    op.drop_table('phase_slots')
