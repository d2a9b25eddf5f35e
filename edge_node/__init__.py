"""The edge node: sensor sources, scoring, delivery to the hub, model lifecycle, telemetry."""
