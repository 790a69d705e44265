"""Background jobs whose queue is a table (ingestion of vector store files)."""
