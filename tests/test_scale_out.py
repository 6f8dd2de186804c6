"""What makes helpers.tools.precompute scale and its caches portable, checked without starting processes:
the LCR unit plan of cifar10 and its simulated schedule, the screening waves, the formats' bytes (the same
from any writer, timings in cost records), cache keys that do not change where a GPU is visible, the
process group's backend, and the LCR units joined into exactly the serial stages."""
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import cache
from helpers.cache import StageCache, params_hash
from helpers.experiment import Experiment
from helpers.paper1 import stages as paper1
from helpers.tools import precompute


def test_cifar10_lcr_plan_keeps_16_ranks_busy():
    """The plan of cifar10's LCR, from params/cifar10.yaml and the committed outputs (no model runs): every one
    of 16 ranks gets at least 10 units; the parts cover every mutant x image once; more ranks, more speed."""
    steps = precompute.unit_plan("cifar10")
    sim = {r: precompute.simulate(steps, r) for r in (1, 4, 16, 64)}
    assert sim[16]["fewest_units"] >= 10, sim[16]
    parts = [u for step in steps for u in step if u.stage == "lcr_preds_part"]
    assert sum(u.cost for u in parts) == 100 * (50000 + 5000)  # 100 mutants x the train and test images
    assert all(len({u.what for u in step}) == len(step) for step in steps)  # no unit twice
    assert sim[1]["speedup"] == 1.0 and sim[4]["speedup"] < sim[16]["speedup"] < sim[64]["speedup"]
    assert sim[16]["efficiency"] >= 0.8, sim[16]


def test_simulated_queue_is_list_scheduling_with_barriers():
    unit = precompute.Unit
    one = [unit("x", (i,), 1.0) for i in range(4)]
    assert precompute.simulate([one], 2)["makespan"] == 2.0
    # a long unit first keeps the other rank busy with the short ones; a barrier between the steps
    steps = [[unit("x", (0,), 3.0), *one[:3]], [unit("x", (9,), 1.0)]]
    sim = precompute.simulate(steps, 2)
    assert sim["makespan"] == 4.0 and sim["serial"] == 7.0 and sim["fewest_units"] == 2


def test_screening_waves_depend_on_the_blocks_results_only():
    """Each wave covers what the acceptance rate of the waves before it says is missing; a resumed run (any
    subset of a wave's blocks done) is told to screen exactly the rest of that wave."""
    b = paper1.SCREEN_BLOCK

    def nxt(done, start=(0, 0)):
        return paper1.next_screen_blocks(done, 10, 200, start)

    first, _, _ = nxt({})
    assert first == list(range(0, 13, b))  # 10 x 1.25 candidates, whole blocks
    assert nxt({s: b for s in first}) == ([], 16, 16)  # all accepted: decided
    half = {s: b // 2 for s in first}  # half accepted: the rest at that rate (5 x 2 x 1.25), whole blocks
    second, covered, accepted = nxt(half)
    assert (covered, accepted) == (16, 8) and second == list(range(16, 16 + 5, b))
    for done_of_second in ([], second[:1], second[1:]):  # interrupted anywhere: the same wave's remainder
        assert nxt({**half, **{s: 1 for s in done_of_second}})[0] == [s for s in second if s not in done_of_second]
    assert nxt({s: 0 for s in range(0, 200, b)})[0] == []  # max_tries covered: decided (exhausted)
    assert nxt({0: 0, 8: 1})[0] == [4, 12]  # the first wave's missing blocks
    assert nxt({}, start=(16, 10))[0] == []  # going on from a decided grid cell of the same setting


FRAME_OBJ = pd.DataFrame({"id": ["a", "b"], "x": [0.5, 1.25]})
OBJECTS = {"csv.gz": (FRAME_OBJ, cache.FRAME), "npz": ({"v": np.arange(4.0)}, cache.NPZ),
           "pt": ({"w": torch.arange(3.0), "h": [{"loss": 0.5}]}, cache.TENSORS), "json": ({"k": [1, 2]}, cache.JSON)}


def test_every_format_writes_the_same_bytes_from_any_writer(tmp_path, monkeypatch):
    """Two writers (other temporary names, another clock) write the same file and sidecar bytes; what the
    computation cost is in the cost record beside the cache, not in either file."""
    paths, real = {}, time.time
    for writer, shift in (("a", 0.0), ("b", 1e6)):
        monkeypatch.setattr(time, "time", lambda s=shift: real() + s)
        sc = StageCache(tmp_path / writer / "p", tmp_path / writer / "stages.json", "cpu")
        for ext, (obj, fmt) in OBJECTS.items():
            sc.stage("tiny", {"ext": ext}, lambda o=obj, c=sc: (c.note(extra=1), o)[1], fmt)
            paths.setdefault(ext, []).append((sc.path("tiny", {"ext": ext}, fmt), sc))
        monkeypatch.setattr(time, "time", real)
    for ext, [(pa, sa), (pb, _)] in paths.items():
        assert pa.name == pb.name and pa.read_bytes() == pb.read_bytes(), ext
        assert cache.sidecar_of(pa).read_bytes() == cache.sidecar_of(pb).read_bytes(), ext
        assert "seconds" not in cache.sidecar_of(pa).read_text()
        cost = sa.cost("tiny", {"ext": ext}, OBJECTS[ext][1])
        assert cost["seconds"] >= 0 and cost["extra"] == 1 and cost["device"] == "cpu"
        assert sa.cost_path(pa).parent == tmp_path / "a" / cache.COSTS_FOLDER / "p"


class _Key(Exception):
    pass


def _keys(exp: Experiment, monkeypatch) -> dict:
    """The cache keys of stages whose results do not depend on the device, without computing them."""
    seen = {}

    def spy(self, stage, params, compute, fmt):
        seen[stage] = params_hash(params)
        raise _Key

    with monkeypatch.context() as m:
        m.setattr(StageCache, "stage", spy)
        for fn in (lambda: exp.predictions, lambda: paper1.screen(exp, "gf", 0.05, 10),
                   lambda: paper1.screen_block(exp, "gf", 0.05, 4)):
            with pytest.raises(_Key):
                fn()
    return {"model": params_hash(exp.model_params), **seen}


def test_cache_keys_are_the_same_where_a_gpu_is_visible(tmp_path, monkeypatch):
    """digits with ``device: auto`` and its committed checkpoint: where CUDA is visible (made to look so) the
    experiment runs on CUDA, and the keys of its predictions and LCR screenings are those of the CPU run,
    so a GPU run's cache finishes on a CPU machine (amp only counts where a model is trained on CUDA)."""
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.delenv("COMPANION_SIMULATED_ACCELERATOR", raising=False)
    over = {"device": "auto"}
    cpu_exp = Experiment("digits", over, output_dir=tmp_path / "o", progress=False)
    assert cpu_exp.device.type == "cpu" and cpu_exp.cfg["training"]["amp"]
    cpu = _keys(cpu_exp, monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # set on CUDA; restored
    gpu_exp = Experiment("digits", over, output_dir=tmp_path / "o", progress=False)
    assert gpu_exp.device.type == "cuda"
    assert _keys(gpu_exp, monkeypatch) == cpu
    # conductance parts: laid out by the profile's batch, not the accelerator-scaled one
    from helpers.paper1.stages import conductance_parts

    assert gpu_exp.eval_batch_size > cpu_exp.eval_batch_size
    assert conductance_parts(gpu_exp) == conductance_parts(cpu_exp)
    # without the checkpoint the model is trained, on CUDA with amp: that key does change, and says so
    trained = {"checkpoint": None, "device": "auto"}
    assert Experiment("digits", trained, output_dir=tmp_path / "o", progress=False).model_params["amp"] is True


def test_precompute_backend_follows_the_profile_not_the_machine(monkeypatch):
    """Where CUDA is visible (made to look so), a CPU profile's process group is still gloo; NCCL only for a
    profile that runs on CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("COMPANION_SIMULATED_ACCELERATOR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert precompute.profile_uses_cuda("digits") is False
    assert precompute.Group(cuda=precompute.profile_uses_cuda("digits")).backend == "gloo"
    assert precompute.profile_uses_cuda("digits", {"device": "auto"}) is True
    assert precompute.Group(cuda=precompute.profile_uses_cuda("digits", {"device": "auto"})).backend == "nccl"


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_lcr_units_join_into_the_serial_stages_byte_for_byte(tmp_path, monkeypatch):
    """The final screening joined from blocks screened in reverse order, and a label-matrix chunk joined from
    small parts cached in reverse order, are the files of the serial path (screen_mutants; one pass per
    split), byte for byte, sidecars included."""
    over = {"lcr.operator": "gf", "lcr.rate": 0.05, "lcr.n_mutants": 10}
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "serial"))
    serial = Experiment("digits", over, output_dir=tmp_path / "o1", progress=False)
    paper1.lcr_chunk(serial, "train", 0)  # the final screening, serially, then one pass over train
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "units"))
    monkeypatch.setattr(paper1, "LCR_PART", 250)  # 2 batches of 125 per part: 4 parts of train
    units = Experiment("digits", over, output_dir=tmp_path / "o2", progress=False)
    while wave := paper1.screen_wave(units, "gf", 0.05, 10)[0]:
        for start in wave[::-1]:
            paper1.screen_block(units, "gf", 0.05, start)
    parts = [p for p in paper1.lcr_parts(units) if p[0] == "train" and p[1] == 0]
    assert len(parts) == 4
    for p in parts[::-1]:
        paper1.lcr_part(units, *p)
    paper1.lcr_chunk(units, "train", 0)
    a, b = _files(serial.artifacts_dir), _files(units.artifacts_dir)
    joined = {n for n in a if n.startswith(("lcr_screen-", "lcr_preds-"))}
    assert len(joined) == 4 and all(a[n] == b[n] for n in joined)  # the screening and the chunk, with sidecars
    assert any(n.startswith("lcr_screen_block-") for n in b) and not any(n.startswith("lcr_screen_block-") for n in a)
    # the stage log counts the units' compute with the join's: the report's stage costs are not the joins' alone
    log = json.loads(units.cache.log_path.read_text())["stages"]
    joined_log = {e["stage"]: e for e in log.values() if e["stage"] in ("lcr_screen", "lcr_preds")}
    assert set(joined_log) == {"lcr_screen", "lcr_preds"} and all(e["units_seconds"] > 0 for e in joined_log.values())
    assert "units_seconds" not in {k for e in json.loads(serial.cache.log_path.read_text())["stages"].values()
                                   for k in e}


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    """What a process killed mid-write left beside the cache (its pid is gone) is removed at the next run's
    start; a file being written by a live process, or by another machine, stays."""
    import os
    import subprocess
    import sys

    from helpers.utils import atomic_path, remove_orphan_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    with atomic_path(tmp_path / "x.npz") as tmp:  # being written by this (live) process
        live = tmp.name
        tag = live.split(".")[3]
        host = tag.rsplit("-", 1)[0]
        orphan = tmp_path / f".y.npz.{host}-{dead}.abc123.tmp"
        other = tmp_path / f".z.npz.elsewhere-{dead}.abc123.tmp"
        for f in (orphan, other):
            f.write_text("half")
        assert remove_orphan_temporaries(tmp_path) == [orphan.name]
        assert (tmp_path / live).exists() and other.exists() and not orphan.exists()
        tmp.write_text("done")
    assert (tmp_path / "x.npz").read_text() == "done" and str(os.getpid()) in tag


def test_progress_line_scales_the_elapsed_time_by_the_cost_left():
    """A quarter of the step's estimated cost taken after 60 s: about 180 s (3.0 min) left; nothing taken yet:
    unknown."""
    line = precompute.progress_line("LCR label-matrix parts", 9, 40, 0.25, 60.0, 7.2, 1, 2)
    assert line == ("precompute rank 1/2: LCR label-matrix parts 10/40 done in 7.2 s; step 1.0 min so far, "
                    "about 3.0 min left")
    assert precompute.progress_line("x", 0, 3, 0.0, 5.0, 5.0, 0, 1).endswith("about ? left")
