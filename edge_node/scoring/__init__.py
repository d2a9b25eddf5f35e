"""The scoring path: windows, the model runtime, result batches, episodes and drift."""
