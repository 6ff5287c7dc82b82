"""The bottom layer: the database handle (database.py), its schema and migrations (schema.py), the catalog of
datasets and encoders (catalog.py), the on-disk layout (layout.py) and DuckDB query helpers (queries.py)."""
