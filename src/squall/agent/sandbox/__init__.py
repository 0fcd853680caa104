"""The sandbox layer: one interface (api.py), one module per implementation."""
