"""Operating Loom: logging, the start-up report, metrics, export and import."""
