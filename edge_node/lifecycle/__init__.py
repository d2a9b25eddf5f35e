"""Model lifecycle: commands, deploys, switches, probation, model store, command book, capture."""
