"""The store interface the hub uses; PostgreSQL (shared by several hubs); migrations."""
