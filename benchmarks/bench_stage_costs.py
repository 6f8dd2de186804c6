"""What each stage costs on a ResNet-18-sized model: the worked example of docs/your-model.md
(``params/example-own-model.yaml``, torchvision ResNet-18 on the 180 images of examples/shapes/) read at
224x224, ImageNet's input size, with all six notebooks run from an empty cache.

Each stage's wall time comes from the run's stage log (``stages.json``: the seconds a stage took when it
was computed, not loaded), divided by the image passes it made, so that the cost of a stage on N images
with other settings is that per-pass cost times its passes:

* ``model``: training, ``training.epochs`` passes over the training images (forward and backward);
* ``predictions``: one forward pass over every image;
* ``conductance``: exact conductance of every image (about one forward and one backward pass);
* ``lcr_preds``: one forward pass per accepted mutant per image (``lcr_screen``, the screening of
  candidate mutants on the validation images and the grid, is reported in seconds only);
* ``cfe_generators``: ``cfe.epochs`` passes over the training images' cached pooled features, one
  generator per class;
* ``debug_run``: ``debugging.epochs`` fine-tune passes over the training images, per grid cell and seed.

``projection`` multiplies the per-pass costs by the passes of N = 10,000 images at the papers' settings
(100 mutants, 10 generator epochs, 20 fine-tune epochs for one run): an extrapolation of this
measurement, stated as one.  Timing is the run's own (``time.perf_counter`` around each stage), on the
device the run used; ``--quick`` reads the images at 64x64 instead.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from helpers.profiles import load_profile
from helpers.tools import run_notebooks

from .common import bench_device, describe

PROFILE = "example-own-model"
N_PROJECTED = 10_000
#: the papers' settings the projection uses: LCR mutants (paper 1), generator and fine-tune epochs (paper 2)
PAPER = {"n_mutants": 100, "cfe_epochs": 10, "debug_epochs": 20}


def _passes(cfg: dict, n: dict, stage: str) -> float:
    """Image passes a stage made in the run (``n``: images per split and all)."""
    if stage == "model":
        return n["train"] * cfg["training"]["epochs"]
    if stage in ("predictions", "conductance"):
        return n["all"]
    if stage == "cfe_generators":
        return n["train"] * cfg["cfe"]["epochs"]
    if stage == "debug_run":
        return n["train"] * cfg["debugging"]["epochs"]
    raise KeyError(stage)


def run(quick: bool = False) -> dict:
    size = 64 if quick else 224
    overrides = {"image_size": size, "device": "cpu" if bench_device().type == "cpu" else "auto"}
    with tempfile.TemporaryDirectory(prefix="bench-stage-costs-") as tmp:
        before = {k: os.environ.get(k) for k in ("COMPANION_ARTIFACTS", "COMPANION_OUTPUT_DIR")}
        os.environ["COMPANION_ARTIFACTS"] = str(Path(tmp) / "art")
        try:
            notebooks = run_notebooks.run(PROFILE, overrides, output_dir=str(Path(tmp) / "out"))
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out = Path(tmp) / "out"
        log = json.loads((out / "stages.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    cfg = load_profile(PROFILE, overrides)
    n = dict(metrics["model"]["n"])
    n["all"] = sum(n.values())
    seconds: dict[str, float] = {}
    runs: dict[str, int] = {}
    for rec in log["stages"].values():
        seconds[rec["stage"]] = seconds.get(rec["stage"], 0.0) + rec["seconds"]
        runs[rec["stage"]] = runs.get(rec["stage"], 0) + 1
    stages = {}
    for stage, s in sorted(seconds.items()):
        if stage == "lcr_preds":  # one forward pass per accepted mutant per image
            passes = n["all"] * int(metrics["lcr"]["n_mutants"])
        else:
            try:
                passes = _passes(cfg, n, stage) * (runs[stage] if stage == "debug_run" else 1)
            except KeyError:  # a stage without a per-image cost (the mutant screening, the detectors)
                stages[stage] = {"seconds": round(s, 2)}
                continue
        stages[stage] = {"seconds": round(s, 2), "image_passes": passes,
                         "ms_per_image_pass": round(1e3 * s / passes, 3)}
    per = {k: v.get("ms_per_image_pass") for k, v in stages.items()}
    n_train = int(N_PROJECTED * n["train"] / n["all"])
    projection_s = {
        "predictions": per.get("predictions", 0) * N_PROJECTED / 1e3,
        "conductance": per.get("conductance", 0) * N_PROJECTED / 1e3,
        "lcr_100_mutants": per.get("lcr_preds", 0) * N_PROJECTED * PAPER["n_mutants"] / 1e3,
        "cfe_generators_10_epochs": per.get("cfe_generators", 0) * n_train * PAPER["cfe_epochs"] / 1e3,
        "debug_run_20_epochs": per.get("debug_run", 0) * n_train * PAPER["debug_epochs"] / 1e3,
    }
    return {"stage_costs": {
        "device": describe(bench_device()), "model": cfg["model"], "image_size": size, "images": n,
        "threads": log["stages"][next(iter(log["stages"]))].get("threads"),
        "stages": stages, "notebook_seconds": notebooks,
        "projection": {"n_images": N_PROJECTED, "n_train": n_train, "settings": PAPER,
                       "minutes": {k: round(v / 60, 1) for k, v in projection_s.items()},
                       "note": "extrapolated from the per-pass costs above, not measured at this size"},
    }}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(quick=ap.parse_args().quick), indent=2))
