"""The I/O edges: the ARM client, the read budget, credentials, metrics, sd_notify, logs, and
`sql/` (SQLite and PostgreSQL). Library errors are translated here into `errors` kinds."""
