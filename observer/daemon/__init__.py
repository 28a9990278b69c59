"""The daemon: room connections, webhooks, the HTTP server, the writer and telemetry."""
