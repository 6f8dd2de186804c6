"""Test hooks: the environment switches with which the test suite injects faults into the tools, in one
place.  None of them is meant for users; each is read only where named here.

- ``COMPANION_PRECOMPUTE_CRASH_RANK`` = ``"rank:units"``: that rank of :mod:`helpers.tools.precompute`
  stops after running that many units of a step (a dying worker: ``os._exit(3)``), in the first attempt
  only: a worker that ``torchrun --max-restarts`` started again (``TORCHELASTIC_RESTART_COUNT`` > 0) runs on;
- ``COMPANION_PRECOMPUTE_CRASH_HOW`` = ``raise``: it raises instead (a failing worker); ``kill``: it sends
  itself SIGKILL (a worker killed from outside, which runs no handler and no ``finally``);
- ``COMPANION_PRECOMPUTE_PRIVATE_CACHE`` = a folder: each rank caches in ``<folder>/rank<r>``, as on
  machines that share no disk.
"""
from __future__ import annotations

import os
import signal
import sys

CRASH_RANK = "COMPANION_PRECOMPUTE_CRASH_RANK"
CRASH_HOW = "COMPANION_PRECOMPUTE_CRASH_HOW"
PRIVATE_CACHE = "COMPANION_PRECOMPUTE_PRIVATE_CACHE"


def crash_after(rank: int) -> int | None:
    """How many units of a step ``rank`` runs before it crashes (``CRASH_RANK``), or None (also in a
    restarted attempt of torchrun: the restart is what a test of restarts checks)."""
    crash = os.environ.get(CRASH_RANK)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    if crash and crash.split(":")[0] == str(rank):
        return int(crash.split(":")[1])
    return None


def crash(rank: int, done: int) -> None:
    """Stop this rank as ``CRASH_HOW`` says: raise, die at once as a dying process does, or be killed."""
    how = os.environ.get(CRASH_HOW)
    if how == "raise":
        raise RuntimeError(f"simulated failure of rank {rank} after {done} units")
    print(f"[rank {rank}] simulated {'kill' if how == 'kill' else 'crash'} after {done} units", file=sys.stderr,
          flush=True)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def private_cache() -> str | None:
    """The folder under which each rank keeps a cache of its own (``PRIVATE_CACHE``), or None."""
    return os.environ.get(PRIVATE_CACHE) or None
