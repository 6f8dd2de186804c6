"""Fill a profile's stage cache on many processes, GPUs or machines with ``torch.distributed``; the
notebooks then run as usual and find every heavy stage cached.

    torchrun --standalone --nproc_per_node=2 -m helpers.tools.precompute --profile digits
    torchrun --nproc_per_node=8 -m helpers.tools.precompute --profile cub100 --only lcr,debugging
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        -m helpers.tools.precompute --profile cub100          # on every machine (or the Slurm example, README)
    python -m helpers.tools.precompute --profile digits       # one process: the same stages, in order

The heavy stages are embarrassingly parallel, so they are cut into **work units**, each a cached stage
of its own and seeded by what it is (a mutant's seed, an image range, a class group, a grid cell and
seed), never by rank: any number of processes computes exactly the numbers one process computes.

- ``conductance``: ranges of whole eval batches of each split (:func:`paper1.conductance_parts`);
- ``lcr``: the grid cells' screening, then the label-matrix chunks (:func:`paper1.lcr_chunks`); the
  final screening of the chosen setting is one serial unit (it stops at the n-th accepted mutant);
- ``cfe``: the generators' batched class groups (:func:`paper2.generator_groups`);
- ``debugging``: the grid cells at the profile's seed, then both arms x the paired seeds, then the
  filter agreement of the two models it reports.

Units are dealt round-robin over the ranks; what is upstream of a stage (model, predictions, pooled
features, the chosen setting) is computed once by rank 0 while the others wait at a barrier, and each
stage ends with rank 0 assembling the units into the stage the notebooks read.  Every unit is written
atomically (temporary file + rename) with its sha256, so a killed rank or job resumes from the finished
units.  With a shared artifacts folder (``COMPANION_ARTIFACTS`` on a shared file system, the usual case
on a cluster) every rank writes there directly; without one, the ranks exchange the cache files they
wrote over the process group (gloo or NCCL) after each step, so every machine's cache ends complete.

Backend: gloo on CPUs, NCCL when CUDA is present (each rank on GPU ``LOCAL_RANK``).  Nothing here is
needed for a plain single-process run, which stays exactly as it was.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1
from helpers.paper2 import stages as paper2
from helpers.paths import absolute_folder_variables
from helpers.profiles import parse_set
from helpers.tools import testhooks
from helpers.utils import cli_main

#: the stages, in the order their inputs require
STAGES = ("conductance", "lcr", "cfe", "debugging")


# --------------------------------------------------------------------------- the process group
def profile_uses_cuda(profile: str, overrides: dict | None = None) -> bool:
    """Whether the profile's device resolves to a CUDA GPU here (``device: cpu`` never does, even where
    CUDA is visible): the process group's backend and device follow it."""
    from helpers.devices import get_device
    from helpers.profiles import load_profile

    return get_device(load_profile(profile, overrides)["device"]).type == "cuda"


class Group:
    """This process's place in the job: rank, world size, and the helpers the stages need.  ``cuda``: the
    profile runs on CUDA GPUs (NCCL, one GPU per local rank), else on CPUs (gloo), whatever is visible."""

    def __init__(self, cuda: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world > 1
        self.cuda = cuda
        if self.distributed and not dist.is_initialized():
            if self.cuda:
                torch.cuda.set_device(self.local_rank)  # "cuda" below means this rank's GPU
            # ranks wait while rank 0 computes upstream stages (the final LCR screening, a model to
            # train): far longer than the collectives' default timeouts (10 min for NCCL)
            minutes = float(os.environ.get("COMPANION_PRECOMPUTE_TIMEOUT_MIN", "720"))
            dist.init_process_group(self.backend, timeout=datetime.timedelta(minutes=minutes))

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

    def mine(self, units: list) -> list:
        """This rank's share of the units: round-robin, so the split depends on nothing but the list."""
        return units[self.rank::self.world]

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
    tokens = [None] * group.world
    dist.all_gather_object(tokens, token)
    group.barrier()
    seen = all((exp.artifacts_dir / t).is_file() for t in tokens)
    flags = [None] * group.world
    dist.all_gather_object(flags, seen)
    group.barrier()
    (exp.artifacts_dir / token).unlink(missing_ok=True)
    return all(flags)


# --------------------------------------------------------------------------- running units
def _cache_files(exp: Experiment) -> list[str]:
    """The cache files of the profile (not temporary, hidden or set-aside ones)."""
    d = exp.artifacts_dir
    return sorted(p.name for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                  and ".corrupt" not in p.name) if d.is_dir() else []


def sync_cache(exp: Experiment, group: Group, shared: bool) -> None:
    """Make every rank's cache complete.  On a shared cache it already is.  Otherwise the ranks
    exchange the lists of their cache files, and each file some rank lacks is broadcast, one at a
    time, by the first rank that has it (computed now or cached earlier: a resumed run too); data
    files travel before their sidecars and are written atomically."""
    from helpers.utils import atomic_path

    if shared or not group.distributed:
        group.barrier()
        return
    lists = [None] * group.world
    dist.all_gather_object(lists, _cache_files(exp))
    have = [set(x) for x in lists]
    for name in sorted(set().union(*have), key=lambda n: (n.endswith(".json"), n)):
        holders = [r for r in range(group.world) if name in have[r]]
        if len(holders) == group.world:
            continue
        box = [(exp.artifacts_dir / name).read_bytes() if group.rank == holders[0] else None]
        dist.broadcast_object_list(box, src=holders[0])
        if group.rank not in holders:
            with atomic_path(exp.artifacts_dir / name) as tmp:
                Path(tmp).write_bytes(box[0])
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
              crash_after: int | None = None) -> int:
    """Run this rank's share of ``units`` (each computes or loads one cached stage), then share the
    cache (:func:`sync_cache`).  Returns how many units this rank ran."""
    mine = group.mine(units)

    def work():
        for i, unit in enumerate(mine):
            if crash_after is not None and i >= crash_after:  # a test hook: a rank killed, or failing, mid-run
                testhooks.crash(group.rank, i)
            unit()

    _step(exp, group, shared, work)
    return len(mine)


def on_rank0(exp: Experiment, group: Group, shared: bool, fn: Callable[[], object]) -> None:
    """Compute something upstream once (rank 0) while the other ranks wait, then share its files."""
    _step(exp, group, shared, fn if group.rank == 0 else (lambda: None))


# --------------------------------------------------------------------------- the stages
def conductance_stage(exp, group, shared, crash_after=None) -> dict:
    on_rank0(exp, group, shared, lambda: exp.predictions)
    parts = paper1.conductance_parts(exp)
    n = run_units(exp, group, [lambda p=p: paper1.conductance_part(exp, *p) for p in parts], shared, crash_after)
    on_rank0(exp, group, shared, lambda: paper1.conductance_table(exp))
    return {"units": len(parts), "mine": n}


def lcr_stage(exp, group, shared, crash_after=None) -> dict:
    lc = exp.cfg["lcr"]
    on_rank0(exp, group, shared, lambda: exp.predictions)
    cells = [] if lc["operator"] and lc["rate"] else paper1.lcr_grid_cells(exp)
    n = run_units(exp, group, [lambda c=c: paper1.screen(exp, c[0], c[1], lc["grid_mutants"]) for c in cells], shared,
                  crash_after)
    on_rank0(exp, group, shared, lambda: paper1.lcr_final_screen(exp))  # serial: it stops at the n-th accepted mutant
    chunks = paper1.lcr_chunks(exp)
    n += run_units(exp, group, [lambda c=c: paper1.lcr_chunk(exp, *c) for c in chunks], shared, crash_after)
    on_rank0(exp, group, shared, lambda: paper1.lcr_matrix(exp))
    return {"units": len(cells) + 1 + len(chunks), "mine": n}


def cfe_stage(exp, group, shared, crash_after=None) -> dict:
    on_rank0(exp, group, shared, lambda: paper2.pooled_table(exp))
    groups = paper2.generator_groups(exp)
    n = run_units(exp, group, [lambda g=g: paper2.generator_group(exp, g) for g in groups], shared, crash_after)
    on_rank0(exp, group, shared, lambda: paper2.generators(exp))
    return {"units": len(groups), "mine": n}


def debugging_stage(exp, group, shared, crash_after=None) -> dict:
    on_rank0(exp, group, shared, lambda: (paper2.generators(exp), paper2.debug_masks(exp)))
    cells = paper2.debug_grid(exp)
    n = run_units(exp, group, [lambda c=c: paper2.debug_run(exp, c[0], c[1], exp.seed) for c in cells], shared,
                  crash_after)
    _, chosen = paper2.debugging_grid(exp)  # every rank: all cells are cached now
    seeds = [exp.seed + i for i in range(exp.cfg["debugging"]["seeds"])]
    runs = [(l1, l2, s) for l1, l2 in (chosen, (0.0, 0.0)) for s in seeds]
    n += run_units(exp, group, [lambda r=r: paper2.debug_run(exp, *r) for r in runs], shared, crash_after)
    agree = [(*chosen, exp.seed), (0.0, 0.0, exp.seed)]
    n += run_units(exp, group, [lambda a=a: paper2.debugged_agreement(exp, *a) for a in agree], shared, crash_after)
    return {"units": len(cells) + len(runs) + len(agree), "mine": n}


STAGE_FUNCTIONS = {"conductance": conductance_stage, "lcr": lcr_stage, "cfe": cfe_stage, "debugging": debugging_stage}


def precompute(profile: str, only: list[str] | None = None, overrides: dict | None = None,
               crash_after: int | None = None) -> dict:
    """Run the stages (all of :data:`STAGES`, or ``only``) on this process's share; returns a summary."""
    group = Group(cuda=profile_uses_cuda(profile, overrides))
    private = testhooks.private_cache()
    if private:
        os.environ["COMPANION_ARTIFACTS"] = str(Path(private) / f"rank{group.rank}")
    try:
        # the stage log goes to a scratch folder: the committed figures/<profile>/ is the notebooks' business
        exp = Experiment(profile, overrides, output_dir=tempfile.mkdtemp(prefix="precompute-"), progress=False)
        shared = shared_cache(exp, group)
        summary = {"profile": exp.name, "world": group.world, "rank": group.rank, "shared_cache": shared,
                   "device": str(exp.device), "stages": {}}
        for name in only or STAGES:
            t0 = time.perf_counter()
            summary["stages"][name] = {**STAGE_FUNCTIONS[name](exp, group, shared, crash_after),
                                       "seconds": round(time.perf_counter() - t0, 2)}
        return summary
    finally:
        group.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="profile name (params/<name>.yaml) or a YAML path")
    ap.add_argument("--only", default=None, help=f"comma-separated stages of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides, dotted keys")
    a = ap.parse_args(argv)
    absolute_folder_variables()  # relative folders mean the user's directory, on every rank
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
