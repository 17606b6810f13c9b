"""sessions: server-side portal sessions, revoked on sign-out

Revision ID: 0003_sessions
Revises: 0008_app_deletion
Create Date: 2026-12-01 21:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003_sessions'
down_revision = '0008_app_deletion'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sessions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('login', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('credential', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_sessions_expires_at', 'sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_sessions_expires_at', table_name='sessions')
    op.drop_table('sessions')
