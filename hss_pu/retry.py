"""The reconnection schedule of H.627.2 clause 9.3.1.3, as a pure function."""

from __future__ import annotations

import random

__all__ = ["MAX_FAILURES_BEFORE_RESCHEDULE", "retry_delay"]

# "more than 15 consecutive failures" -> schedule again through Vs (9.3.1.2).
MAX_FAILURES_BEFORE_RESCHEDULE = 15


def retry_delay(failures: int, scale: float = 1.0, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (N >= 1).

    N <= 12: uniform in [0, 5*N] s, so a fleet that lost its platform at the same
    moment does not come back at the same moment; N > 12: 60 s. ``scale`` is the
    config's backoff_scale (tests shrink it); it must be > 0.
    """
    if not scale > 0:
        raise ValueError(f"backoff scale must be > 0, not {scale}: a retry loop would spin")
    if failures < 1:
        return 0.0
    r = rng or random
    base = r.uniform(0.0, 5.0 * failures) if failures <= 12 else 60.0
    return base * scale
