"""Squall on a cluster: node agents placed by Ray, reached by gateways over a direct channel."""
