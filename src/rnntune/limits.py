"""Retry limits: each set here once, shown by `rnntune status` and in the report.

A leaf module (it imports nothing of rnntune's), so the storage layer, rnntune.state and the
worker all read the same constant.
"""

from __future__ import annotations

__all__ = [
    "DB_RETRY_FIRST_DELAY_S",
    "DB_RETRY_MAX_DELAY_S",
    "MAX_OUTAGE_S",
    "MAX_REPEAT_ERRORS",
    "MAX_REPEAT_RECLAIMS",
    "MAX_RETRY",
    "give_up_after",
]

MAX_RETRY = 3  # a trial whose worker went silent this many times more is failed for good
MAX_REPEAT_ERRORS = 5  # a repeat whose training raised this often is failed for good
MAX_REPEAT_RECLAIMS = 3  # a repeat taken from a silent worker this often is failed for good

# A worker waits out a database outage (README: "up to 10 minutes"), retrying with capped
# exponential backoff, then stops with one `Error:` line.
MAX_OUTAGE_S = 600.0
DB_RETRY_FIRST_DELAY_S = 0.5
DB_RETRY_MAX_DELAY_S = 10.0


def give_up_after(budget: int) -> int:
    """Trial errors after which a family stops sampling (a search space that mostly crashes)."""
    return max(10, 3 * budget)
