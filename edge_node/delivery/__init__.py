"""Getting messages to the hub: the outbox, the MQTT adapter and the outgoing messages."""
