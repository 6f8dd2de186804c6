"""Test hooks: the environment switches with which the test suite injects faults into the tools, in one
place.  None of them is meant for users; each is read only where named here.

- ``COMPANION_PRECOMPUTE_CRASH_RANK`` = ``"rank:units"``: that rank of :mod:`helpers.tools.precompute`
  stops after running that many of its units (a killed worker: ``os._exit(3)``);
- ``COMPANION_PRECOMPUTE_CRASH_HOW`` = ``raise``: it raises instead (a failing worker);
- ``COMPANION_PRECOMPUTE_PRIVATE_CACHE`` = a folder: each rank caches in ``<folder>/rank<r>``, as on
  machines that share no disk.
"""
from __future__ import annotations

import os
import sys

CRASH_RANK = "COMPANION_PRECOMPUTE_CRASH_RANK"
CRASH_HOW = "COMPANION_PRECOMPUTE_CRASH_HOW"
PRIVATE_CACHE = "COMPANION_PRECOMPUTE_PRIVATE_CACHE"


def crash_after(rank: int) -> int | None:
    """How many units ``rank`` runs before it crashes (``CRASH_RANK``), or None."""
    crash = os.environ.get(CRASH_RANK)
    if crash and crash.split(":")[0] == str(rank):
        return int(crash.split(":")[1])
    return None


def crash(rank: int, done: int) -> None:
    """Stop this rank as ``CRASH_HOW`` says: raise, or die at once as a killed process does."""
    if os.environ.get(CRASH_HOW) == "raise":
        raise RuntimeError(f"simulated failure of rank {rank} after {done} units")
    print(f"[rank {rank}] simulated crash after {done} units", file=sys.stderr, flush=True)
    os._exit(3)


def private_cache() -> str | None:
    """The folder under which each rank keeps a cache of its own (``PRIVATE_CACHE``), or None."""
    return os.environ.get(PRIVATE_CACHE) or None
