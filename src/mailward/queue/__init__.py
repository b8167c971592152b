"""Outbound delivery: queue worker, routing, TLS policy, DSNs."""
