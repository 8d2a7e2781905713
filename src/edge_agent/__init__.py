"""The edge runtime: sources, campaigns, batcher, spool, uplink, live state, clock, health."""
