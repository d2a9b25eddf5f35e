"""The drift -> retrain loop: its policy, candidate checks, table, promotion and serve driver."""
