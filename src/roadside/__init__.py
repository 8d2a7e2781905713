"""Roadside-unit specifics on top of edge_agent: roadside sensors, signal phase, local warnings."""
