"""Store interface, PostgreSQL (several hubs), migrations, how SQLite files are opened."""
