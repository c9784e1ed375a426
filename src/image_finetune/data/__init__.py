"""Data sources, the canonical on-disk format and the ingest step."""
