"""The data plane: HTTP requests to functions."""
