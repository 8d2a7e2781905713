"""The server: ingest, archive, index, acks, live state, hazards, checks, scenarios, clips."""
