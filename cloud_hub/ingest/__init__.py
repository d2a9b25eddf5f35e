"""What nodes send: MQTT adapter, validation, dedupe, fleet state, registry, metrics."""
