"""Progress of the long stages (training, conductance, mutant screening and label matrix, CFE generators,
fine-tunes), shown where the user is looking.

Run by hand (a notebook, Python): a tqdm bar, off with ``TQDM_DISABLE=1``.  In a batch run (``make
figures``), the kernels run without bars, so that an executed notebook keeps no progress output; instead
each bar reports its state as JSON lines to the file named by ``COMPANION_PROGRESS_FILE``, and the runner
(:mod:`helpers.tools.run_notebooks`) shows them on its terminal as live bars with a rate and an ETA."""
from __future__ import annotations

import json
import os
import time
import warnings
from itertools import count

from tqdm.std import TqdmWarning

with warnings.catch_warnings():
    # in a kernel without ipywidgets tqdm.auto falls back to the text bar, and says so with a warning that
    # names this machine's site-packages: executed notebooks would carry it
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from helpers.utils import tqdm_disabled_by_env

#: the variable that names the progress file of a batch run
ENV = "COMPANION_PROGRESS_FILE"
_ids = count()


def reporting() -> bool:
    """Whether this process reports progress to a batch runner's file."""
    return bool(os.environ.get(ENV))


def wanted() -> bool:
    """Whether progress should be shown at all: on a runner's terminal, or as bars here."""
    return reporting() or not tqdm_disabled_by_env()


class FileBar:
    """A tqdm-like bar (``update``, ``set_postfix``, ``close``, iteration) that appends its state to the
    progress file at most every ``every`` seconds, and when it closes."""

    def __init__(self, iterable=None, total=None, desc: str = "", initial: int = 0, every: float = 1.0):
        self.iterable, self.desc, self.n, self.every = iterable, desc, initial, every
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.postfix, self.last = total, "", 0.0
        self.id = f"{os.getpid()}-{next(_ids)}"
        self._emit()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._emit()

    def set_postfix(self, refresh: bool = True, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def close(self) -> None:
        self._emit(done=True)

    def _emit(self, done: bool = False) -> None:
        self.last = time.monotonic()
        line = json.dumps({"id": self.id, "desc": self.desc, "n": self.n, "total": self.total,
                           "postfix": self.postfix, "done": done})
        try:
            with open(os.environ[ENV], "a") as f:
                f.write(line + "\n")
        except (OSError, KeyError):
            pass  # the runner went away: progress is a courtesy, never a reason to fail


def bar(iterable=None, *, total=None, desc: str = "", enabled: bool = True, initial: int = 0, unit: str = "it",
        mininterval: float = 1.0):
    """A progress bar for a long stage: to the batch runner's terminal when one listens, else a tqdm bar
    (unless ``enabled`` is false or ``TQDM_DISABLE`` asks for none)."""
    if enabled and reporting():
        return FileBar(iterable, total=total, desc=desc, initial=initial)
    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, mininterval=mininterval,
                disable=not enabled or tqdm_disabled_by_env())
