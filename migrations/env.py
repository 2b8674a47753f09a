"""Alembic environment: runs on the connection the daemon hands over, or opens its own."""

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from backupjobd.adapters.sql.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run_on)
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `backupjobd migrate`")

given = config.attributes.get("connection")
if given is not None:
    run_on(given)
else:
    asyncio.run(run_async(config.get_main_option("sqlalchemy.url") or ""))
