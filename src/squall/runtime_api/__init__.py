"""The Lambda Runtime API (2018-06-01) that Node and `provided` instances talk to: one
endpoint per instance (server.py), Lambda's rules as a state machine (state.py), and the check
that a connection comes from the instance itself (peer.py)."""
