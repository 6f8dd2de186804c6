"""Fill a profile's stage cache on many processes, GPUs or machines with ``torch.distributed``; the
notebooks then run as usual and find every heavy stage cached.

    torchrun --standalone --nproc_per_node=2 -m helpers.tools.precompute --profile digits
    torchrun --nproc_per_node=8 -m helpers.tools.precompute --profile cub100 --only lcr,debugging
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m helpers.tools.precompute --profile cub100          # on every machine (or the Slurm example, docs)
    python -m helpers.tools.precompute --profile digits       # one process: the same stages, in order
    python -m helpers.tools.precompute --profile cifar10 --plan   # the LCR units and a simulated schedule

The heavy stages are embarrassingly parallel, so they are cut into **work units**, each a cached stage
of its own and seeded by what it is (a mutant's seed, an image range, a class group, a grid cell and
seed), never by rank: any number of processes computes exactly the numbers one process computes, and
fills a cache folder identical file for file (:mod:`helpers.cache` writes the same bytes from any writer).

- ``conductance``: ranges of whole eval batches of each split (:func:`paper1.conductance_parts`);
- ``lcr``: the screening of the grid cells and then of the chosen setting, in blocks of the candidate
  stream (:func:`paper1.screen_block`), wave after wave until the blocks decide it
  (:func:`paper1.screen_wave`); then the label matrix in parts, mutant chunks x image ranges
  (:func:`paper1.lcr_parts`).  Joined in seed order and batch order, they give exactly the serial
  screening and matrix;
- ``cfe``: the generators' batched class groups (:func:`paper2.generator_groups`);
- ``debugging``: the grid cells at the profile's seed, then both arms x the paired seeds, then the
  filter agreement of the two models it reports.

**A queue, not a deal.**  The units of a step are taken from a shared counter on the process group's
own store (``store.add``: each rank takes the next unit the moment it is free), so a fast rank takes more
units and no rank idles while work is left; the LCR units are queued by their estimated cost, largest first.
What is upstream of a step (model, predictions, pooled features, the chosen setting) is computed once by
rank 0 while the others wait at a barrier, and each stage ends with rank 0 joining the units into the
stage the notebooks read.  :func:`lcr_plan` and :func:`simulate` give the LCR units of a profile and
their schedule on N ranks without running a model.

**Progress.**  Each rank prints a line to stderr as each of its units ends: the step, the unit's number of
the step's, what it took, and the step's time so far with an estimate of what is left (weighted by the units'
estimated costs; :func:`progress_line`).  The summary (JSON, rank 0) goes to stdout at the end.

Every unit is written atomically (temporary file + rename) with its sha256, so a killed rank or job
resumes from the finished units: ``torchrun --max-restarts N`` starts the ranks again and they go on
from the cache (the store's keys are kept apart per attempt; see docs/scaling-out.md for
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE``).  With a shared artifacts folder (``COMPANION_ARTIFACTS`` on a
shared file system, the usual case on a cluster) every rank writes there directly; without one, the
ranks exchange the cache files they wrote over the process group (gloo or NCCL) after each step, so
every machine's cache ends complete.  What each unit cost is in its cost record
(``<cache root>/.stage-costs/<profile>/``, :mod:`helpers.cache`); nothing goes to the system's temporary
folder, and a temporary file that a killed rank of this machine left in the cache is removed at the start.

Backend: gloo when the profile runs on CPUs, NCCL when it runs on CUDA (each rank on GPU ``LOCAL_RANK``),
whatever the machine shows (:func:`profile_uses_cuda`).  Nothing here is needed for a plain
single-process run, which stays exactly as it was.
"""
from __future__ import annotations

import argparse
import datetime
import heapq
import itertools
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1
from helpers.paper2 import stages as paper2
from helpers.paths import FIGURES_DIR, absolute_folder_variables
from helpers.profiles import load_profile, parse_set
from helpers.tools import testhooks
from helpers.utils import cli_main, duration_text, remove_orphan_temporaries

#: the stages, in the order their inputs require
STAGES = ("conductance", "lcr", "cfe", "debugging")


# --------------------------------------------------------------------------- the process group
def profile_uses_cuda(profile: str, overrides: dict | None = None) -> bool:
    """Whether the profile's device resolves to a CUDA GPU here (``device: cpu`` never does, even where
    CUDA is visible): the process group's backend and device follow it."""
    from helpers.devices import get_device

    return get_device(load_profile(profile, overrides)["device"]).type == "cuda"


def restart_attempt() -> int:
    """Which attempt of ``torchrun --max-restarts`` this process belongs to (0: the first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


class Group:
    """This process's place in the job: rank, world size, the store and the helpers the stages need.
    ``cuda``: the profile runs on CUDA GPUs (NCCL, one GPU per local rank), else on CPUs (gloo), whatever
    is visible.

    The process group is made on the store of torch's ``env://`` rendezvous, under a prefix of its own per
    restart attempt: a restarted attempt never meets the keys (gloo's addresses, the queue's counters) of
    the attempt it replaces, also where torchrun keeps one store across attempts."""

    def __init__(self, cuda: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world > 1
        self.cuda = cuda
        self.store = None
        self._queues = 0
        if self.distributed and not dist.is_initialized():
            if self.cuda:
                torch.cuda.set_device(self.local_rank)  # "cuda" below means this rank's GPU
            # ranks wait while rank 0 computes upstream stages (a model to train, the grid's choice):
            # far longer than the collectives' default timeouts (10 min for NCCL)
            minutes = float(os.environ.get("COMPANION_PRECOMPUTE_TIMEOUT_MIN", "720"))
            timeout = datetime.timedelta(minutes=minutes)
            store, self.rank, self.world = next(dist.rendezvous("env://", timeout=timeout))
            self.store = dist.PrefixStore(f"helpers.precompute/attempt{restart_attempt()}/", store)
            dist.init_process_group(self.backend, store=dist.PrefixStore("group/", self.store), rank=self.rank,
                                    world_size=self.world, timeout=timeout)

    @property
    def backend(self) -> str:
        return "nccl" if self.cuda else "gloo"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """Whether every rank's step succeeded (a MIN all-reduce), so that a failure on one rank stops
        all of them together instead of leaving the others waiting in the next collective."""
        if not self.distributed:
            return ok
        flag = torch.tensor([1 if ok else 0], device=f"cuda:{self.local_rank}" if self.cuda else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def take(self, n: int):
        """The indices of ``n`` units that this rank runs: each rank takes the next index the moment it
        is free, from a counter on the store (``store.add`` returns every index to exactly one rank), until
        none is left; one process takes them all, in order.  Every rank calls it once per step, so the
        ranks' counters agree."""
        self._queues += 1
        if not self.distributed:
            yield from range(n)
            return
        key = f"queue/{self._queues}"
        while True:
            i = self.store.add(key, 1) - 1
            if i >= n:
                return
            yield i

    def from_rank0(self, fn: Callable[[], object]):
        """``fn()`` computed by rank 0 and handed to every rank (a list of units, a setting), so that every
        rank works on the same list; an error on rank 0 is raised on every rank."""
        if not self.distributed:
            return fn()
        box = [None]
        if self.rank == 0:
            try:
                box = [("ok", fn())]
            except Exception as e:  # re-raised below, on every rank
                box = [("error", e)]
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            if self.rank == 0:
                raise value
            raise RuntimeError(f"precompute: rank 0 failed ({value}); rank {self.rank} stops too")
        return value

    def gather(self, value) -> list:
        """``value`` of every rank, in rank order."""
        if not self.distributed:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def shared_cache(exp: Experiment, group: Group) -> bool:
    """Whether every rank sees the same artifacts folder: each writes a token there, and each checks
    that it sees all of them."""
    if not group.distributed:
        return True
    exp.artifacts_dir.mkdir(parents=True, exist_ok=True)
    token = f".precompute-{uuid.uuid4().hex}"
    (exp.artifacts_dir / token).write_text(str(group.rank))
    tokens = group.gather(token)
    group.barrier()
    seen = all((exp.artifacts_dir / t).is_file() for t in tokens)
    flags = group.gather(seen)
    group.barrier()
    (exp.artifacts_dir / token).unlink(missing_ok=True)
    return all(flags)


# --------------------------------------------------------------------------- running units
def _listing(folder: Path, suffix: str = "") -> list[str]:
    """The names of ``folder``'s files that end in ``suffix``, leaving out hidden ones (an atomic write's
    temporary file) and set-aside ``.corrupt`` ones."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix)
                  and not p.name.startswith(".") and ".corrupt" not in p.name) if folder.is_dir() else []


def _exchange(group: Group, folder: Path, names: list[str]) -> None:
    """Every file of ``folder`` that some rank has (``names``: this rank's) and another lacks is broadcast,
    one at a time, by the first rank that has it, and written atomically where it is missing; data files
    travel before their sidecars."""
    from helpers.utils import atomic_path

    have = [set(x) for x in group.gather(names)]
    for name in sorted(set().union(*have), key=lambda n: (n.endswith(".json"), n)):
        holders = [r for r in range(group.world) if name in have[r]]
        if len(holders) == group.world:
            continue
        box = [(folder / name).read_bytes() if group.rank == holders[0] else None]
        dist.broadcast_object_list(box, src=holders[0])
        if group.rank not in holders:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / name) as tmp:
                Path(tmp).write_bytes(box[0])


def sync_cache(exp: Experiment, group: Group, shared: bool) -> None:
    """Make every rank's cache complete.  On a shared cache it already is.  Otherwise the ranks
    exchange the lists of their cache files, and each file some rank lacks is broadcast by the first
    rank that has it (computed now or cached earlier: a resumed run too); then the same for the cost
    records, so that a stage joined from units computed on another machine counts their seconds
    (``units_seconds``) there too."""
    if shared or not group.distributed:
        group.barrier()
        return
    _exchange(group, exp.artifacts_dir, _listing(exp.artifacts_dir))  # the cache files
    _exchange(group, exp.cache.cost_folder, _listing(exp.cache.cost_folder, ".json"))  # their cost records
    group.barrier()


def _step(exp: Experiment, group: Group, shared: bool, fn: Callable[[], object]) -> None:
    """Run ``fn`` on this rank, agree with the others that every rank succeeded, then sync the cache.
    A failure anywhere raises on every rank (the failing one re-raises its own error)."""
    error = None
    try:
        fn()
    except Exception as e:  # re-raised below, after the other ranks know
        error = e
    if not group.all_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"precompute: another rank failed (see its log); rank {group.rank} stops too")
    sync_cache(exp, group, shared)


def run_units(exp: Experiment, group: Group, units: list[Callable[[], object]], shared: bool,
              crash_after: int | None = None, label: str = "units", costs: list[float] | None = None) -> int:
    """Run ``units`` (each computes or loads one cached stage) on the ranks through the queue
    (:meth:`Group.take`), then share the cache (:func:`sync_cache`).  Returns how many this rank ran.
    Each rank prints a line to stderr as each of its units ends (:func:`progress_line`; ``costs``, the units'
    estimated costs, weight the ETA where they differ)."""
    ran, t0 = 0, time.perf_counter()
    weights = list(costs) if costs is not None else [1.0] * len(units)
    reached = list(itertools.accumulate(weights))

    def work():
        nonlocal ran
        for i in group.take(len(units)):
            if crash_after is not None and ran >= crash_after:  # a test hook: a rank killed, or failing, mid-run
                testhooks.crash(group.rank, ran)
            t = time.perf_counter()
            units[i]()
            ran += 1
            now = time.perf_counter()
            fraction = reached[i] / reached[-1] if reached[-1] > 0 else (i + 1) / len(units)
            _log(progress_line(label, i, len(units), fraction, now - t0, now - t, group.rank, group.world))

    _step(exp, group, shared, work)
    return ran


def progress_line(label: str, i: int, n: int, fraction: float, elapsed: float, unit_seconds: float, rank: int,
                  world: int) -> str:
    """One line of a long job's log: which unit of which step ended on which rank, what it took, and the
    step's time so far with an estimate of what is left.  The queue hands out units in order, so unit ``i``
    ending means about ``fraction`` of the step's estimated cost was taken (the units before it run or ran on
    some rank); the estimate scales the step's elapsed time by the rest, and is rough while few units ended
    (a unit found in the cache takes no time)."""
    left = duration_text(elapsed * (1 - fraction) / fraction) if fraction > 0 else "?"
    return (f"precompute rank {rank}/{world}: {label} {i + 1}/{n} done in {duration_text(unit_seconds)}; "
            f"step {duration_text(elapsed)} so far, about {left} left")


def _log(line: str) -> None:
    """``line`` to stderr in one write: the ranks share the terminal or log file, and one write of a short line
    is never interleaved with another process's (print writes the text and its newline apart)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def on_rank0(exp: Experiment, group: Group, shared: bool, fn: Callable[[], object]) -> None:
    """Compute something upstream once (rank 0) while the other ranks wait, then share its files."""
    _step(exp, group, shared, fn if group.rank == 0 else (lambda: None))


# --------------------------------------------------------------------------- the LCR units and their plan
@dataclass(frozen=True)
class Unit:
    """A work unit of the LCR stage: its cached stage, what it is (the arguments of
    :func:`paper1.screen_block` or :func:`paper1.lcr_part`) and its estimated cost in mutant forward
    passes of one image (:func:`block_cost`, :func:`part_cost`)."""

    stage: str
    what: tuple
    cost: float


def block_cost(n_val: int) -> float:
    """A screening block's cost: every candidate's whole pass over the validation split (an upper bound:
    early abort ends a rejected candidate sooner; the original model's pass runs once per process)."""
    return float(n_val * paper1.SCREEN_BLOCK)


def part_cost(n_mutants: int, start: int, stop: int) -> float:
    """A label-matrix part's cost: its mutants x its images."""
    return float(n_mutants * (stop - start))


def by_cost(units: list[Unit]) -> list[Unit]:
    """Largest first (ties keep their order): the queue's order, which keeps the last units of a step short."""
    return sorted(units, key=lambda u: -u.cost)


def expected_accepted(start: int, stop: int, rate: float) -> int:
    """How many of candidates [start, stop) a screening with acceptance ``rate`` accepts in the plan: the
    i-th candidate is accepted when ``floor(rate * (i + 1))`` grows, so the first k hold ``floor(rate * k)``."""
    return math.floor(rate * stop + 1e-9) - math.floor(rate * start + 1e-9)


def lcr_plan(cfg: dict, sizes: dict[str, int], acceptance: dict[tuple[str, float], float],
             chosen: tuple[str, float] | None = None) -> list[list[Unit]]:
    """The LCR stage's work units, step by step, as :func:`lcr_stage` makes them, without running a model:
    the screening waves of the grid cells, the waves of the chosen setting (which reuse its cell's blocks),
    then the label-matrix parts.  ``cfg``: the profile's settings; ``sizes``: images per split (train, val,
    test); ``acceptance``: each (operator, rate)'s acceptance rate, with which the plan decides its blocks
    (:func:`expected_accepted`); ``chosen``: the setting the grid chooses (default the profile's
    ``lcr.operator`` / ``rate``).  Each step's units are in the queue's order (:func:`by_cost`); the
    label-matrix parts assume the splits held in memory (batches of ``LCR_BATCH``)."""
    lc = cfg["lcr"]
    steps: list[list[Unit]] = []
    done: dict[tuple[str, float], dict[int, int]] = {}

    def waves(settings, n, start=(0, 0)):
        max_tries = lc["max_tries_factor"] * n
        while True:
            wave = [(op, r, s) for op, r in settings
                    for s in paper1.next_screen_blocks(done.setdefault((op, r), {}), n, max_tries, start)[0]]
            if not wave:
                return
            for op, r, s in wave:
                done[op, r][s] = expected_accepted(s, s + paper1.SCREEN_BLOCK, acceptance[op, r])
            steps.append(by_cost([Unit("lcr_screen_block", w, block_cost(sizes["val"])) for w in wave]))

    fixed = (lc["operator"], float(lc["rate"])) if lc["operator"] and lc["rate"] else None
    setting, start = fixed or chosen, (0, 0)
    if setting is None:
        raise ValueError("lcr_plan: the profile leaves the setting to the grid; give chosen=(operator, rate)")
    if fixed is None:
        cells = [(op, float(r)) for op in lc["grid_operators"] for r in lc["grid_rates"]]
        waves(list(dict.fromkeys(cells + [(str(op), float(r)) for op, r in lc["grid_extra"]])), lc["grid_mutants"])
        n_grid = lc["grid_mutants"]
        start = paper1.next_screen_blocks(done[setting], n_grid, lc["max_tries_factor"] * n_grid)[1:]
    waves([setting], lc["n_mutants"], start)
    n, chunk = lc["n_mutants"], paper1.LCR_CHUNK
    steps.append(by_cost([Unit("lcr_preds_part", (split, i, a, b), part_cost(min(chunk, n - i), a, b))
                          for split in ("train", "test") for i in range(0, n, chunk)
                          for a, b in paper1.lcr_part_ranges(sizes[split], paper1.LCR_BATCH)]))
    return steps


def committed_evidence(profile: str) -> dict:
    """What :func:`lcr_plan` needs and a profile's committed outputs (``figures/<profile>/``) recorded: the
    split sizes (``accuracy.csv``), each grid cell's acceptance (``lcr_grid.csv``: accepted / tried) and the
    chosen setting with its own acceptance (``metrics.json``: ``lcr`` n_mutants / tried)."""
    import pandas as pd

    folder = FIGURES_DIR / profile
    sizes = {str(r.split): int(r.n) for r in pd.read_csv(folder / "accuracy.csv").itertuples()}
    acceptance = {(str(r.operator), float(r.rate)): (r.accepted / r.tried if r.tried else 0.0)
                  for r in pd.read_csv(folder / "lcr_grid.csv").itertuples()}
    lcr = json.loads((folder / "metrics.json").read_text())["lcr"]
    chosen = (str(lcr["operator"]), float(lcr["rate"]))
    acceptance[chosen] = lcr["n_mutants"] / lcr["tried"]
    return {"sizes": sizes, "acceptance": acceptance, "chosen": chosen}


def unit_plan(profile: str, overrides: dict | None = None) -> list[list[Unit]]:
    """:func:`lcr_plan` of a profile: its settings (``params/<profile>.yaml``) and its committed outputs
    (:func:`committed_evidence`); nothing is computed."""
    cfg = load_profile(profile, overrides)
    return lcr_plan(cfg, **committed_evidence(cfg["name"]))


def simulate(steps: list[list[Unit]], ranks: int) -> dict:
    """The schedule of ``steps`` on ``ranks`` equal workers through the queue: in each step a rank takes
    the next unit the moment it is free (greedy list scheduling, in the queue's order); the steps are
    separated by barriers, and a unit costs its estimated cost, nothing else (no start-up, no exchange of
    files, no rank 0 joining).  Returns ranks, units, serial (the sum of the costs), makespan, speedup
    (serial / makespan), efficiency (speedup / ranks) and the fewest units any rank runs."""
    makespan, counts = 0.0, [0] * ranks
    for step in steps:
        free = [(0.0, r) for r in range(ranks)]
        for unit in step:
            t, r = heapq.heappop(free)
            counts[r] += 1
            heapq.heappush(free, (t + unit.cost, r))
        makespan += max(t for t, _ in free)
    serial = sum(u.cost for step in steps for u in step)
    speedup = serial / makespan if makespan else 1.0
    return {"ranks": ranks, "units": sum(len(s) for s in steps), "serial": serial, "makespan": makespan,
            "speedup": round(speedup, 2), "efficiency": round(speedup / ranks, 2), "fewest_units": min(counts)}


# --------------------------------------------------------------------------- the stages
def conductance_stage(exp, group, shared, crash_after=None) -> list[int]:
    """Each stage function returns [units this rank ran, units of the stage]."""
    on_rank0(exp, group, shared, lambda: exp.predictions)
    parts = group.from_rank0(lambda: paper1.conductance_parts(exp))
    n = run_units(exp, group, [lambda p=p: paper1.conductance_part(exp, *p) for p in parts], shared, crash_after,
                  "conductance parts")
    on_rank0(exp, group, shared, lambda: paper1.conductance_table(exp))
    return [n, len(parts)]


def lcr_stage(exp, group, shared, crash_after=None) -> list[int]:
    """The screening of the grid cells and of the chosen setting in waves of blocks, then the label matrix
    in parts (:func:`lcr_plan` makes the same units from the settings alone)."""
    lc = exp.cfg["lcr"]
    ran = units = 0
    on_rank0(exp, group, shared, lambda: exp.predictions)
    n_val = len(exp.data["val"])

    def waves(settings, n, start=(0, 0)):
        nonlocal ran, units
        while True:
            wave = group.from_rank0(lambda: by_cost([
                Unit("lcr_screen_block", (op, r, s), block_cost(n_val))
                for op, r in settings for s in paper1.screen_wave(exp, op, r, n, start)[0]]))
            if not wave:
                return
            ran += run_units(exp, group, [lambda u=u: paper1.screen_block(exp, *u.what) for u in wave], shared,
                             crash_after, "LCR screening blocks", [u.cost for u in wave])
            units += len(wave)

    start = (0, 0)
    if not (lc["operator"] and lc["rate"]):
        waves(paper1.lcr_grid_cells(exp), lc["grid_mutants"])
        on_rank0(exp, group, shared, lambda: paper1.lcr_grid(exp))  # the cells, joined from their blocks
    setting = group.from_rank0(lambda: paper1.lcr_setting(exp))
    if not (lc["operator"] and lc["rate"]):  # the chosen cell's waves go on where its grid waves ended
        start = group.from_rank0(lambda: paper1.screen_wave(exp, *setting, lc["grid_mutants"])[1:])
    waves([setting], lc["n_mutants"], start)
    on_rank0(exp, group, shared, lambda: paper1.lcr_final_screen(exp))
    chunk = paper1.LCR_CHUNK

    def parts():
        n = len(paper1.lcr_final_screen(exp)[2]["seeds"])
        return by_cost([Unit("lcr_preds_part", p, part_cost(min(chunk, n - p[1]), p[2], p[3]))
                        for p in paper1.lcr_parts(exp, chunk, todo=True)])

    todo = group.from_rank0(parts)
    ran += run_units(exp, group, [lambda u=u: paper1.lcr_part(exp, *u.what) for u in todo], shared, crash_after,
                     "LCR label-matrix parts", [u.cost for u in todo])
    on_rank0(exp, group, shared, lambda: paper1.lcr_matrix(exp))
    return [ran, units + len(todo)]


def cfe_stage(exp, group, shared, crash_after=None) -> list[int]:
    on_rank0(exp, group, shared, lambda: paper2.pooled_table(exp))
    groups = group.from_rank0(lambda: paper2.generator_groups(exp))
    n = run_units(exp, group, [lambda g=g: paper2.generator_group(exp, g) for g in groups], shared, crash_after,
                  "CFE generator groups")
    on_rank0(exp, group, shared, lambda: paper2.generators(exp))
    return [n, len(groups)]


def debugging_stage(exp, group, shared, crash_after=None) -> list[int]:
    on_rank0(exp, group, shared, lambda: (paper2.generators(exp), paper2.debug_masks(exp)))
    cells = paper2.debug_grid(exp)
    n = run_units(exp, group, [lambda c=c: paper2.debug_run(exp, c[0], c[1], exp.seed) for c in cells], shared,
                  crash_after, "debugging grid cells")
    _, chosen = paper2.debugging_grid(exp)  # every rank: all cells are cached now
    seeds = [exp.seed + i for i in range(exp.cfg["debugging"]["seeds"])]
    runs = [(l1, l2, s) for l1, l2 in (chosen, (0.0, 0.0)) for s in seeds]
    n += run_units(exp, group, [lambda r=r: paper2.debug_run(exp, *r) for r in runs], shared, crash_after,
                   "debugging fine-tunes")
    agree = [(*chosen, exp.seed), (0.0, 0.0, exp.seed)]
    n += run_units(exp, group, [lambda a=a: paper2.debugged_agreement(exp, *a) for a in agree], shared, crash_after,
                   "debugging filter agreements")
    return [n, len(cells) + len(runs) + len(agree)]


STAGE_FUNCTIONS = {"conductance": conductance_stage, "lcr": lcr_stage, "cfe": cfe_stage, "debugging": debugging_stage}


def precompute(profile: str, only: list[str] | None = None, overrides: dict | None = None,
               crash_after: int | None = None) -> dict:
    """Run the stages (all of :data:`STAGES`, or ``only``) on this process's share; returns a summary:
    per stage, its units, how many each rank ran (``by_rank``), how many stages the ranks computed rather
    than found cached (``computed``: fewer than the units after a restart), and rank 0's seconds."""
    group = Group(cuda=profile_uses_cuda(profile, overrides))
    private = testhooks.private_cache()
    if private:
        os.environ["COMPANION_ARTIFACTS"] = str(Path(private) / f"rank{group.rank}")
    try:
        exp = Experiment(profile, overrides, progress=False)
        exp.cache.log_path = None  # no stage log (the notebooks' business): each unit's cost is in its cost record
        for folder in (exp.artifacts_dir, exp.cache.cost_folder):  # what a killed writer of this machine left
            remove_orphan_temporaries(folder)
        shared = shared_cache(exp, group)
        summary = {"profile": exp.name, "world": group.world, "rank": group.rank, "shared_cache": shared,
                   "device": str(exp.device), "attempt": restart_attempt(), "stages": {}}
        for stage in only or STAGES:
            t0, computed = time.perf_counter(), exp.cache.computed
            if group.rank == 0:
                _log(f"precompute: {exp.name}, stage {stage} on {group.world} process(es)")
            ran, units = STAGE_FUNCTIONS[stage](exp, group, shared, crash_after)
            counts = group.gather((ran, exp.cache.computed - computed))
            summary["stages"][stage] = {"units": units, "by_rank": [c[0] for c in counts],
                                        "computed": sum(c[1] for c in counts),
                                        "seconds": round(time.perf_counter() - t0, 2)}
        return summary
    finally:
        group.close()


def plan_table(profile: str, ranks=(4, 8, 16, 32, 64), overrides: dict | None = None) -> list[dict]:
    """:func:`simulate` of :func:`unit_plan` on each of ``ranks``."""
    steps = unit_plan(profile, overrides)
    return [simulate(steps, r) for r in ranks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="profile name (params/<name>.yaml) or a YAML path")
    ap.add_argument("--only", default=None, help=f"comma-separated stages of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides, dotted keys")
    ap.add_argument("--plan", action="store_true",
                    help="print the LCR units of the profile (from its settings and committed outputs) and their "
                         "simulated schedule on 4-64 ranks; computes nothing")
    a = ap.parse_args(argv)
    absolute_folder_variables()  # relative folders mean the user's directory, on every rank
    if a.plan:
        steps = unit_plan(a.profile, parse_set(a.set))
        print(json.dumps({"profile": a.profile, "steps": [len(s) for s in steps],
                          "units": sum(len(s) for s in steps), "schedule": [simulate(steps, r) for r in
                                                                             (1, 4, 8, 16, 32, 64)]}, indent=1))
        return 0
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    bad = [s for s in only or [] if s not in STAGES]
    if bad:
        raise SystemExit(f"--only: {bad} unknown; valid: {', '.join(STAGES)}")
    summary = precompute(a.profile, only, parse_set(a.set), testhooks.crash_after(int(os.environ.get("RANK", "0"))))
    if summary["rank"] == 0:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
