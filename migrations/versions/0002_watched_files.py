"""Watched folders: the ledger of files taken from them, so none is inspected twice.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "watched_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("folder", sa.String(length=1024), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=True),
        sa.Column("current_path", sa.String(length=1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'acting', 'settled')", name=op.f("ck_watched_files_state")
        ),
        sa.CheckConstraint(
            "action IS NULL OR action IN ('leave', 'move', 'delete')",
            name=op.f("ck_watched_files_action"),
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_watched_files_image_id_images")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watched_files")),
    )
    op.create_index(op.f("ix_watched_files_folder_sha256"), "watched_files", ["folder", "sha256"])
    op.create_index(op.f("ix_watched_files_folder_state"), "watched_files", ["folder", "state"])
    op.create_index(op.f("ix_watched_files_image_id"), "watched_files", ["image_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_watched_files_image_id"), table_name="watched_files")
    op.drop_index(op.f("ix_watched_files_folder_state"), table_name="watched_files")
    op.drop_index(op.f("ix_watched_files_folder_sha256"), table_name="watched_files")
    op.drop_table("watched_files")
