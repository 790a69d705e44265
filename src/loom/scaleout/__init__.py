"""Running as several replicas on one database: code-interpreter session ownership, the internal channel."""
