"""Per-instance hardening, applied in the forked child before it serves anything.

``apply`` takes the ``harden`` map the platform put in the fork request. Every step is optional so
the same runtime serves the ``process`` and ``bwrap`` sandboxes.
"""

from __future__ import annotations

import ctypes
import resource
import signal
from typing import Any

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def apply(opts: dict[str, Any]) -> None:
    # The zygote is our parent; when it dies we die (the zygote itself dies with the platform).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, value in opts.get("rlimits", {}).items():
        limit = getattr(resource, name)
        resource.setrlimit(limit, (value, value))
