"""The control API, /api/v1."""
