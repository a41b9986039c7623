"""Reading the review-queue routing settings (changed by annotation/services/routing.py)."""

from __future__ import annotations

from annotation.models import RoutingConfig


def routing_config_get() -> RoutingConfig:
    """The one settings row, made with the defaults on first use. Every queue 'next'
    reads it, in SQL: the ORM took longer to compile the query than PostgreSQL to run it."""
    table = RoutingConfig._meta.db_table
    found = list(RoutingConfig.objects.raw(f"SELECT * FROM {table} ORDER BY id LIMIT 1"))
    return found[0] if found else RoutingConfig.objects.create()
