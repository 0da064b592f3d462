"""Cameras: their state, written by the capture process, and the triggers the web hands them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=True),
        sa.Column("every_nth", sa.Integer(), nullable=True),
        sa.Column("line", sa.String(length=128), nullable=True),
        sa.Column("lot", sa.String(length=128), nullable=True),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_frame_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_capture_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("frames_read", sa.BigInteger(), nullable=False),
        sa.Column("frames_captured", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_seconds", sa.Float(), nullable=True),
        sa.Column("next_retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "mode IN ('interval', 'every_nth', 'trigger')", name=op.f("ck_cameras_mode")
        ),
        sa.CheckConstraint(
            "status IN ('starting', 'connected', 'retrying', 'ended', 'stopped')",
            name=op.f("ck_cameras_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cameras")),
    )
    op.create_table(
        "camera_triggers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("taken_by", sa.String(length=128), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["camera_id"], ["cameras.id"], name=op.f("fk_camera_triggers_camera_id_cameras")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_camera_triggers_job_id_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_camera_triggers")),
    )
    op.create_index(
        op.f("ix_camera_triggers_camera_id_taken_at"),
        "camera_triggers",
        ["camera_id", "taken_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_camera_triggers_camera_id_taken_at"), table_name="camera_triggers")
    op.drop_table("camera_triggers")
    op.drop_table("cameras")
