"""PostgreSQL adapters (scale mode): the catalog, billing and the shared dedupe store, over
psycopg 3 with a connection pool; the schema is versioned and migrated at start."""
