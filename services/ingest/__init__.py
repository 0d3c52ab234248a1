"""ingest: validates and normalises upstream documents and questions."""
