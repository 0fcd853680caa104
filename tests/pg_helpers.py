"""A throwaway PostgreSQL schema per test: the store on PostgreSQL without a database of its own.

The server is the one the tests expect at 127.0.0.1:5432 (trust auth, database ``test``);
``SQUALL_TEST_POSTGRES`` names another. Each test gets ``CREATE SCHEMA t_<random>`` and a store
URL whose ``search_path`` is that schema, so runs and tests never see each other's tables; the
schema is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

PG_URL = os.environ.get("SQUALL_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")


def pg_address() -> tuple[str, int]:
    parts = urlsplit(PG_URL)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@contextmanager
def pg_schema() -> Iterator[str]:
    """Yield a ``postgresql://`` store URL confined to a fresh schema; drop it at the end."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
