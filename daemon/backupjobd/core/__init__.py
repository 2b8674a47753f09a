"""The pure core: Azure ids and bodies, records and views, decisions, sweep rules,
registration forms, webhook events. No I/O, no event loop, no clock (import-linter checks)."""
