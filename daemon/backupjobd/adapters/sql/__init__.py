"""The SQLAlchemy store for SQLite and PostgreSQL: engines and the one transaction path
(`engine`), queries by aggregate, Alembic migrations (`migrate`), and `SqlStore`."""
