"""Retrieval: parse files, chunk by tokens, embed, index (SQLite or PostgreSQL) and search (hybrid)."""
