"""Alembic environment of the storage database, for the server and for the command line.

The server passes its open connection in ``config.attributes["connection"]`` (from
``AsyncConnection.run_sync``, inside its running event loop, in a transaction that
already holds the migration lock; see :meth:`signaling.db_engine.Database.migrate`).
``alembic -c <ini> upgrade head`` (no connection given) opens its own async engine.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from signaling.db_schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    """Run the pending migrations on ``connection``."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    """Open an engine for the configured URL and migrate (command line only)."""
    engine = create_async_engine(
        str(config.get_main_option("sqlalchemy.url")), poolclass=pool.NullPool
    )
    async with engine.begin() as conn:
        await conn.run_sync(run_on)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_on(given)
else:
    asyncio.run(run_standalone())
