"""Rollouts in waves gated on model behaviour: plan, gate, state machine, store, serve's glue."""
