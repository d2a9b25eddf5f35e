"""The cloud hub: ingest from the fleet, models, commands to nodes, and its command line."""
