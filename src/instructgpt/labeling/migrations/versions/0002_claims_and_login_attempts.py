"""Claim leases and releases (assignments.took_slot / released_at / release_reason, status
'released'); login attempts in the database (the rate limiter shared by server processes).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 11:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

OLD_STATES = "status IN ('pending', 'done', 'skipped')"
NEW_STATES = "status IN ('pending', 'done', 'skipped', 'released')"


def upgrade() -> None:
    op.create_table('login_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('attempt', sa.String(length=32), nullable=False),
    sa.Column('failed', sa.Boolean(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_attempts'))
    )
    with op.batch_alter_table('login_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_login_attempts_key_at', ['key', 'at'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_attempts_at'), ['at'], unique=False)

    # SQLite cannot alter a CHECK constraint: batch mode copies the table.
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('took_slot', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('released_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('release_reason', sa.String(length=16), nullable=True))
        batch_op.drop_constraint(batch_op.f('ck_assignments_status'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_assignments_status'), NEW_STATES)
        batch_op.create_index('ix_assignments_status_assigned', ['status', 'assigned_at'], unique=False)
    # Held-out labelers' claims never took a slot.
    op.execute("UPDATE assignments SET took_slot = " + ("0" if op.get_bind().dialect.name == "sqlite" else "false")
               + " WHERE user_id IN (SELECT id FROM users WHERE held_out)")
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.alter_column('took_slot', server_default=None)


def downgrade() -> None:
    op.execute("UPDATE assignments SET status = 'skipped' WHERE status = 'released'")
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_index('ix_assignments_status_assigned')
        batch_op.drop_constraint(batch_op.f('ck_assignments_status'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_assignments_status'), OLD_STATES)
        batch_op.drop_column('release_reason')
        batch_op.drop_column('released_at')
        batch_op.drop_column('took_slot')
    with op.batch_alter_table('login_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_attempts_at'))
        batch_op.drop_index('ix_login_attempts_key_at')
    op.drop_table('login_attempts')
