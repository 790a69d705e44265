"""The webhooks' tables: endpoints (one row per registered URL) and deliveries (the outbox).

A delivery row is written in the same transaction as the status change it reports, so an event is
never lost to a crash between the change and its delivery, and never sent for a change rolled back.
"""

from __future__ import annotations

import sqlalchemy as sa

from loom.store.tables import Json, Seq, metadata

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # The endpoint as the API shows it (never its secrets).
    sa.Column("data", Json, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    # After a rotation that keeps the old secret valid for a while, deliveries are signed with both.
    sa.Column("old_secret", sa.String(128), nullable=True),
    sa.Column("old_secret_until", sa.BigInteger, nullable=True),
    # The hot-path lookup: a project's enabled endpoints.
    sa.Index("ix_webhook_endpoints_project", "project", "enabled"),
    sa.Index("ix_webhook_endpoints_list", "project", "created_at", "seq"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    # The `webhook-id` header: the same for every attempt of one delivery (receivers deduplicate on it).
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    # The exact body, fixed when the event happened: every attempt sends the same bytes.
    sa.Column("payload", sa.Text, nullable=False),
    # pending → delivered | failed.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    # When the status change happened (the retry window and the delivery latency count from it).
    sa.Column("created_at", sa.Float, nullable=False),
    # When the next attempt is due; while an attempt is in flight, when its claim lapses.
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_attempt_at", sa.Float, nullable=True),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.String(512), nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", "seq"),
)
