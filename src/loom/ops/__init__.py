"""Observability every layer reports through: Prometheus metrics, log events, log formats, the access log.

It sits below everything it observes and imports none of it (the start-up report and export/import, which
do, live in `loom.admin`)."""
