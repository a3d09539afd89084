"""The claim order's index: open tasks (slots_left > 0), those others have started first, then by id.

Without it every claim read and sorted all open tasks (20-50 ms at 20,000 tasks on SQLite).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

OPEN_TASK = sa.text('slots_left > 0')


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index('ix_tasks_claim', [sa.text('(slots_left < target_labels) DESC'), 'id'], unique=False,
                              sqlite_where=OPEN_TASK, postgresql_where=OPEN_TASK)


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_tasks_claim')
