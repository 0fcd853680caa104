"""The node agent: sandboxes, zygotes and instances on this machine."""
