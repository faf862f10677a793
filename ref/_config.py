"""Settings read from the environment, each validated with a clear error."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

DEFAULT_WORKER_TIMEOUT = 60.0
TIMEOUT_VARIABLE = "DISTREF_WORKER_TIMEOUT"

#: A worker announces its address as ``distref_worker:<port>#<host>``.
ADDRESS_PREFIX = "distref_worker:"


def worker_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Seconds every start-up wait may take (``DISTREF_WORKER_TIMEOUT``, 60).

    Read from ``environ``, by default this process's environment (a
    simulated process has an environment of its own).
    """
    raw = (os.environ if environ is None else environ).get(TIMEOUT_VARIABLE)
    if raw is None or raw.strip() == "":
        return DEFAULT_WORKER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{TIMEOUT_VARIABLE}={raw!r} is not a number of seconds; "
            "set it to a positive number such as 60"
        ) from None
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{TIMEOUT_VARIABLE}={raw!r} must be a positive number")
    return value
