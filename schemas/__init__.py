"""The wire contract of edgeml: topics, typed messages, codec, JSON Schema, golden payloads."""
