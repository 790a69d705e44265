"""The run engine: statuses, context building, model calls, tool dispatch, leases. Knows nothing of HTTP."""
