"""The node's own health: latency and power arithmetic, process and board readings."""
