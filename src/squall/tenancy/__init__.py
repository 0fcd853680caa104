"""Tenants, API keys, secrets and quotas: who may do what, and how much.

A request's credential is resolved once, at the edge (``squall.api.routes`` for the control API,
the gateway for /fn/, the SigV4 verifier for AWS-style clients), into a ``Principal``. Below the
edge code receives the tenant as a plain value and never looks it up again.
"""
