"""The store interface the hub uses; PostgreSQL (shared by several hubs); migrations; how
the hub opens its SQLite files."""
