"""figures/<profile>/report.md, the README's "results at a glance" and the generated tables of
docs/, made from what the notebooks wrote (tables, figures, metrics.json), never edited by hand.

    python -m helpers.tools.report figures/digits      # rebuild one report
    python -m helpers.tools.report --readme            # refresh the README's and docs/' generated blocks
    python -m helpers.tools.report --check-docs        # list numbers in README.md / docs/ that disagree with
                                                 # the committed metrics (what tests/test_docs.py checks)

The README and docs/ show the committed references (``tests/reference/<profile>/metrics.json``, the runs
in ``figures/``), never a local rerun's numbers: ``make figures`` on another CPU moves the last digits, and
the README would then disagree with itself.

Two ways a number in README.md or docs/*.md is tied to the references (docs/README.md, "Numbers"):

- a generated block, ``<!-- generated:begin NAME [PROFILE] -->`` ... ``<!-- generated:end -->``, whose
  body is :data:`GENERATORS` [NAME] of the references (the README's block: :data:`README_BEGIN`);
- a number in prose followed by ``<!-- m:PROFILE:EXPR -->``, EXPR a dotted key of that profile's
  metrics.json (list items by index), or +, -, *, / of such keys and constants (``*100`` for a
  percentage) and the statistics of :data:`FUNCTIONS`: the number must be EXPR rounded to the printed
  number of decimals;
- a verdict in prose ("beats", "at chance", "not significant", ...) followed by
  ``<!-- v:PROFILES:KIND(ARG, ...) -->`` (:data:`VERDICTS`): the comparison must hold on the metrics of
  each profile, and the words before it must state that KIND (:func:`verdict_problems`).
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import re
import sys
from pathlib import Path

from helpers.names import display_name
from helpers.paths import REFERENCE_DIR, REPO_ROOT
from helpers.utils import atomic_write_text, cli_main, duration_text

#: the committed references (helpers.tools.regression.REFERENCE_DIR; same layout as figures/: <profile>/metrics.json)

#: Paper 1, Tables 4-6: validation AUROC, validation correct / wrong recall, test correct / wrong recall.
PAPER = {
    "CIFAR-10 / ResNet20 (Table 4)": {
        "conductance": (0.927, 0.851, 0.851, 0.863, 0.850), "lcr": (0.887, 0.815, 0.802, 0.841, 0.806),
        "joint_nn": (0.933, 0.856, 0.856, 0.870, 0.861), "joint_rf": (0.930, 0.853, 0.854, 0.855, 0.858),
        "joint_lda": (0.932, 0.856, 0.856, 0.862, 0.859), "joint_qda": (0.928, 0.854, 0.854, 0.844, 0.861)},
    "ImageNet-50 / InceptionV3 (Table 5)": {
        "conductance": (0.944, 0.873, 0.872, 0.820, 0.886), "lcr": (0.931, 0.844, 0.872, 0.816, 0.943),
        "joint_nn": (0.957, 0.891, 0.894, 0.842, 0.960), "joint_rf": (0.948, 0.860, 0.872, 0.810, 0.943),
        "joint_lda": (0.954, 0.877, 0.872, 0.832, 0.949), "joint_qda": (0.954, 0.893, 0.894, 0.852, 0.937)},
    "ImageNet-100 / InceptionV3 (Table 6)": {
        "conductance": (0.941, 0.873, 0.873, 0.847, 0.896), "lcr": (0.901, 0.836, 0.831, 0.812, 0.856),
        "joint_nn": (0.946, 0.882, 0.881, 0.858, 0.890), "joint_rf": (0.943, 0.875, 0.875, 0.847, 0.903),
        "joint_lda": (0.944, 0.875, 0.875, 0.849, 0.894), "joint_qda": (0.942, 0.874, 0.873, 0.852, 0.890)},
}
def points(fraction: float) -> str:
    """An accuracy difference in percentage points, signed, two decimals; a difference that rounds to
    zero is "0.00", never "-0.00" or "+0.00"."""
    text = f"{100 * fraction:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


#: how the generated tables name the interval of an AUROC: what it resamples, once, in the column's header
AUROC_INTERVAL = "[95 % CI over val images]"
#: ... and of the debugging difference (helpers.paper2.debugging.paired_statistics, ``hier_ci_*``)
DIFFERENCE_INTERVAL = "[95 % CI over seeds and test images]"


#: the order of the detectors in the generated tables; their names come from :mod:`helpers.names`
DETECTOR_ORDER = ("conductance", "lcr", "joint_nn", "joint_rf", "joint_lda", "joint_qda", "joint_nn_msp",
                  "joint_rf_msp", "joint_lda_msp", "joint_qda_msp", "msp", "doctor_alpha", "energy", "entropy",
                  "max_logit", "cfe_recall", "cfe_f1", "cfe_precision", "cfe_outside", "cfe_mask_size",
                  "joint_nn_msp_cfe", "joint_nn_cfe", "joint_nn_cfe_without_lcr")

#: report sections: (title, [table files], [figure stems])
SECTIONS = [
    ("Data and model (notebook 00)", ["splits", "accuracy"], ["samples", "training_curves"]),
    ("Conductance (notebook 01; paper 1, sections 3, 4.1)",
     ["fm_high", "detectors_conductance", "conductance_learning_curve", "detectors_conductance_cf"],
     ["conductance_examples", "conductance_detector_curve", "roc_conductance", "conductance_learning_curve"]),
    ("Label Change Rate (notebook 02; paper 1, section 4.2)", ["lcr_grid", "detectors_lcr", "lcr_sprt"],
     ["lcr_distributions", "lcr_auroc_by_n_mutants", "roc_lcr"]),
    ("Joint classifier (notebook 03; paper 1, section 4.3)",
     ["joint_leak", "detectors_joint", "joint_confusion", "operating_points", "seed_spread"],
     ["roc_joint", "joint_confusion", "relay_curve"]),
    ("Counterfactual filters (notebook 04; paper 2, sections 3, 4.2)",
     ["cfe_generator_history", "cfe_global_filters", "cfe_disable", "cfe_table1", "detectors_cfe", "cfe_gc_sources",
      "cfe_generator_data"],
     ["cfe_generator_training", "cfe_mask_sizes", "cfe_examples", "cfe_global_filters", "roc_cfe",
      "cfe_mask_size_vs_agreement"]),
    ("Model debugging (notebook 05; paper 2, sections 4.3, 4.4)",
     ["debugging_grid", "debugging_loss_terms", "debugging_seeds", "debugging_class_recall", "debugging_beyond"],
     ["debugging_curves", "debugging_gradcam"]),
]


def headline_table(metrics: dict) -> str:
    """Every detector in metrics.json: val AUROC with its 95 % bootstrap interval over the validation images,
    test correct / wrong recall, AUPR, AURC."""
    det = metrics.get("detectors", {})
    lines = [f"| detector | val AUROC {AUROC_INTERVAL} | test AUROC | test correct recall | test wrong recall | "
             "test AUPR (errors) | test FPR@95%TPR | test AURC |", "|---|---|---|---|---|---|---|---|"]
    order = [k for k in DETECTOR_ORDER if k in det] + sorted(k for k in det if k not in DETECTOR_ORDER)
    for name in order:
        v, t = det[name].get("val", {}), det[name].get("test", {})
        if not v or not t:
            continue
        lines.append(f"| {display_name(name)} | {v['auroc']:.3f} [{v['auroc_ci_low']:.3f}, "
                     f"{v['auroc_ci_high']:.3f}] | {t['auroc']:.3f} | {t['correct_recall']:.3f} | "
                     f"{t['wrong_recall']:.3f} | {t['aupr_error']:.3f} | {t['fpr_at_95_tpr']:.3f} | {t['aurc']:.3f} |")
    return "\n".join(lines)


#: the cached stages in pipeline order (helpers.experiment / helpers.paper1.stages)
STAGE_ORDER = ["model", "model (committed checkpoint)", "predictions", "conductance", "conductance_detector",
               "lcr_screen", "lcr_preds", "conductance_oof", "pooled_features", "cfe_generators", "debug_run",
               "debug_agreement"]


def stage_table(stages: dict) -> str:
    """What each cached stage cost when it was computed (stages.json, written by helpers.experiment):
    stages of the same kind (e.g. the label-matrix chunks) are summed; peak memory is the largest
    process peak (resident set) seen at the end of any of them ("n/a": computed before it was logged)."""
    rows: dict[str, dict] = {}
    for e in stages.get("stages", {}).values():
        r = rows.setdefault(e["stage"], {"n": 0, "seconds": 0.0, "rss": None, "threads": set(), "device": set()})
        r["n"] += 1
        r["seconds"] += (e.get("seconds") or 0.0) + (e.get("units_seconds") or 0.0)
        r["units"] = r.get("units", False) or e.get("units_seconds") is not None
        if e.get("peak_rss_mb") is not None:
            r["rss"] = max(r["rss"] or 0.0, e["peak_rss_mb"])
        for k in ("threads", "device"):
            if e.get(k) is not None:
                r[k].add(str(e[k]))
    lines = ["| stage | cached pieces | wall time when computed | peak memory (process RSS) | device / threads |",
             "|---|---|---|---|---|"]
    order = [k for k in STAGE_ORDER if k in rows] + sorted(k for k in rows if k not in STAGE_ORDER)
    for name in order:
        r = rows[name]
        rss = f"{r['rss'] / 1024:.2f} GB" if r["rss"] is not None else "n/a"
        dev = ", ".join(sorted(r["device"])) + " / " + (", ".join(sorted(r["threads"])) or "?")
        mark = " *" if r.get("units") else ""
        lines.append(f"| {name} | {r['n']} | {duration_text(r['seconds'])}{mark} | {rss} | {dev} |")
    total = sum(r["seconds"] for r in rows.values())
    lines.append(f"| total | {sum(r['n'] for r in rows.values())} | {duration_text(total)} | | |")
    if any(r.get("units") for r in rows.values()):
        lines += ["", "\\* joined from work units that `helpers.tools.precompute` computed (screening blocks, "
                  "label-matrix parts), possibly on several processes at once: the units' summed compute time "
                  "plus the join's, not elapsed time."]
    nbs = stages.get("notebooks", {})
    if nbs:
        lines += ["", "Notebook wall times of the last `make figures` run (cached stages are loaded, not "
                  "recomputed): " + ", ".join(f"{k} {v:.0f} s" for k, v in nbs.items()) + "."]
    return "\n".join(lines)


def build_report(output_dir: str | Path) -> str:
    """The Markdown report of one profile's output folder, from its files only."""
    out = Path(output_dir)
    m = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    acc = m.get("model", {}).get("accuracy", {})
    parts = [f"# Results: profile `{m.get('profile', out.name)}`", "",
             "Generated by `helpers.tools.report` from the tables, figures and metrics.json that the notebooks "
             "wrote; regenerate with `make figures PROFILE=<profile>`.", ""]
    if acc:
        parts += ["Model accuracy: " + ", ".join(f"{s} {acc[s]:.3f}" for s in ("train", "val", "test") if s in acc), ""]
    own = m.get("model", {}).get("model_split_accuracy", {})
    if own:  # split.analysis_from_test: the splits above are held-out photos
        parts += ["On the model's own training photos (not in the splits above): " + ", ".join(
            f"{k.removeprefix('model_')} {v:.3f}" for k, v in own.items()), ""]
    if m.get("detectors"):
        parts += ["## Headline: every error detector on the same predictions", "",
                  "Thresholds at equal correct/wrong recall on validation, applied to test.  The AUROC intervals "
                  "resample the validation images of one trained model (one training seed).", "",
                  headline_table(m), ""]
    if "lcr" in m:
        lc = m["lcr"]
        parts += [f"LCR setting: `{lc['operator']}` at rate {lc['rate']}, {lc['n_mutants']} accepted mutants "
                  f"({lc.get('tried', '?')} tried); SPRT: {lc['sprt']['mean_mutants']:.1f} mutants per sample on "
                  f"average.", ""]
    if "relay" in m:
        parts += ["Expert relay on test (joint NN): " + "; ".join(
            f"{op}: accuracy {r['accuracy']:.3f} with {100 * r['discarded_fraction']:.1f}% discarded"
            for op, r in m["relay"].items()), ""]
    for nb, why in m.get("skipped", {}).items():  # helpers.notebook.step_aside
        parts += [f"Notebook `{nb}` stepped aside: {why}", ""]
    if (out / "stages.json").is_file():
        parts += ["## Cost of each stage", "", stage_table(json.loads((out / "stages.json").read_text())), ""]
    for title, tables, figs in SECTIONS:
        present_t = [t for t in tables if (out / f"{t}.md").is_file()]
        present_f = [f for f in figs if (out / f"{f}.png").is_file()]
        if not present_t and not present_f:
            continue
        parts += [f"## {title}", ""]
        for t in present_t:
            parts += [f"### {t}", "", (out / f"{t}.md").read_text().rstrip(), ""]
        for f in present_f:
            parts += [f"![{f}]({f}.png)", ""]
    listed = {n for _, tables, figs in SECTIONS for n in (*tables, *figs)}
    others_t = sorted(p.stem for p in out.glob("*.md") if p.stem not in listed and p.name != "report.md")
    others_f = sorted(p.stem for p in out.glob("*.png") if p.stem not in listed)
    if others_t or others_f:  # every table and figure a notebook wrote is on the page
        parts += ["## Other tables and figures", ""]
        parts += [x for t in others_t for x in (f"### {t}", "", (out / f"{t}.md").read_text().rstrip(), "")]
        parts += [x for f in others_f for x in (f"![{f}]({f}.png)", "")]
    return "\n".join(parts).rstrip() + "\n"


def write_report(output_dir: str | Path) -> Path:
    path = Path(output_dir) / "report.md"
    atomic_write_text(path, build_report(output_dir))
    return path


#: the committed runs the README compares with the papers: paper 1's CIFAR-10 table, paper 1's ImageNet
#: tables (the real-photo, pretrained-model setting closest to cub100), paper 2's CUB tables
PAPER1_CIFAR_PROFILES = ("cifar10", "cifar10-paper", "cifar10-pretrained", "digits")
PAPER1_IMAGENET_PROFILES = ("cub100",)
COMPARED_PROFILES = ("cub100", "cifar10", "cifar10-pretrained", "digits")


def committed_runs(figures_root: str | Path, profiles) -> dict[str, dict]:
    """Each profile's figures/<profile>/metrics.json ({} where a profile has not been run)."""
    files = {p: Path(figures_root) / p / "metrics.json" for p in profiles}
    return {p: json.loads(f.read_text()) if f.is_file() else {} for p, f in files.items()}


def comparison_table(figures_root: str | Path = REFERENCE_DIR,
                     profiles=PAPER1_CIFAR_PROFILES, anchors=("CIFAR-10 / ResNet20 (Table 4)",)) -> str:
    """Paper 1's tables (``anchors``: Table 4, CIFAR-10, by default) beside this companion's committed
    runs (val AUROC; test correct / wrong recall)."""
    runs = committed_runs(figures_root, profiles)
    head = "| setting | " + " | ".join(f"paper {a}: val AUROC | paper: test correct / wrong recall" for a in anchors) \
        + " | " + " | ".join(f"`{p}`: val AUROC {AUROC_INTERVAL} | `{p}`: test correct / wrong recall"
                             for p in profiles) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(anchors) + 2 * len(profiles))]
    for key in ("conductance", "lcr", "joint_nn", "joint_rf", "joint_lda", "joint_qda", "joint_nn_msp", "msp",
                "doctor_alpha"):
        row = [display_name(key)]
        for a in anchors:
            paper = PAPER[a]
            row += ([f"{paper[key][0]:.3f}", f"{paper[key][3]:.3f} / {paper[key][4]:.3f}"] if key in paper
                    else ["-", "-"])
        for p in profiles:
            d = runs[p].get("detectors", {}).get(key)
            if d is None:
                row += ["not run yet", "not run yet"]
            else:
                v, t = d["val"], d["test"]
                row += [f"{v['auroc']:.3f} [{v['auroc_ci_low']:.3f}, {v['auroc_ci_high']:.3f}]",
                        f"{t['correct_recall']:.3f} / {t['wrong_recall']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


#: Paper 2, Table 1 (VGG16 on CUB-200, 1,769 errors of 5,794 test images): errors detected, share, new errors
PAPER2_TABLE1 = {"avg_recall": ("average recall", 541, 0.31, 256),
                 "avg_f1": ("average F1", 680, 0.38, 370),
                 "recall_lt_0.3": ("recall < the recall threshold", 653, 0.37, 369)}
#: the paper's settings of Table 1 (sec. 4.2): the gate (skip), tau, the frequency of G_c, the fixed threshold
PAPER2_SETTINGS = {"skip": 0.9, "tau": 0.9, "frequency": 0.15, "recall_threshold": 0.3}


def cfe_settings(profile: str) -> dict:
    """A profile's Table 1 settings (``cfe.skip``, ``tau``, ``frequency``, ``recall_threshold``) from
    ``params/<profile>.yaml``, the settings its committed run was made with (the regression compares a
    run only when its settings are the committed profile's); the defaults for a profile that has no file."""
    from helpers.profiles import DEFAULTS, ProfileError, load_profile

    try:
        cc = load_profile(profile)["cfe"]
    except (ProfileError, FileNotFoundError, OSError):
        cc = DEFAULTS["cfe"]
    return {k: cc[k] for k in PAPER2_SETTINGS}


def _settings_phrase(key: str, profiles, settings) -> str:
    """``skip 0.9`` when every profile uses the paper's value, else ``skip 0.9 (`digits`: 0.5)``."""
    paper = PAPER2_SETTINGS[key]
    odd = [f"`{p}`: {settings[p][key]:g}" for p in profiles if settings[p][key] != paper]
    return f"{key} {paper:g}" + (f" ({', '.join(odd)})" if odd else "")


def table1_comparison(figures_root: str | Path = REFERENCE_DIR,
                      profiles=COMPARED_PROFILES, settings: dict | None = None) -> str:
    """Paper 2 Table 1 beside this companion's committed runs: errors detected (share of all test
    errors) / new errors, and what MSP catches at the same number of new errors.  Each run's settings
    (``settings``: profile -> :func:`cfe_settings`, read from the profiles by default) head its column."""
    runs = committed_runs(figures_root, profiles)
    settings = settings or {p: cfe_settings(p) for p in profiles}
    head = ("| Table 1 setting | paper (VGG16, CUB-200): errors detected / new errors | "
            + " | ".join(f"`{p}`: errors detected / new errors (MSP at the same new errors)" for p in profiles) + " |")
    lines = [head, "|" + "---|" * (2 + len(profiles)),
             "| settings: skip (the gate: max probability <= skip) / tau / frequency / recall threshold | "
             + " | ".join(" / ".join(f"{s[k]:g}" for k in PAPER2_SETTINGS) for s in (PAPER2_SETTINGS, *(
                 settings[p] for p in profiles))) + " |"]
    for key, (label, det, frac, new) in PAPER2_TABLE1.items():
        label += (" < its class mean, with the gate and frequency above" if key != "recall_lt_0.3"
                  else " above, no gate (skip 0), frequency 0")
        row = [label, f"{det} ({frac:.0%}) / {new}"]
        for p in profiles:
            r = runs[p].get("cfe", {}).get("table1", {}).get(key)
            row.append("not run yet" if r is None else
                       f"{r['errors_detected']} ({r['errors_detected_fraction']:.0%}) / {r['new_errors']} "
                       f"(MSP {r['msp_errors_detected_at_same_new_errors']})")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| CFE 1 - recall as a score: val / test AUROC | not reported | " + " | ".join(
        "not run yet" if "cfe_recall" not in runs[p].get("detectors", {}) else
        f"{runs[p]['detectors']['cfe_recall']['val']['auroc']:.3f} / "
        f"{runs[p]['detectors']['cfe_recall']['test']['auroc']:.3f}"
        f" (MSP {runs[p]['detectors']['msp']['val']['auroc']:.3f} / {runs[p]['detectors']['msp']['test']['auroc']:.3f})"
        for p in profiles) + " |")
    return "\n".join(lines)


#: profiles whose notebook 05 is left out on purpose, and why (their profile says so too)
NOT_RUN_BY_DESIGN = {"cifar10": "not run: paper 2's debugging runs on `cifar10-pretrained`, the stronger model "
                                "on the same data"}


def mde_bounds(d: dict, n_seeds: int) -> tuple[float, float]:
    """The 95 % interval of a run's MDE: recorded (``mde_ci_low`` / ``mde_ci_high``), or from its MDE and
    seed count (:func:`helpers.metrics.mde_interval`) for runs made before it was recorded."""
    if "mde_ci_low" in d and "mde_ci_high" in d:
        return d["mde_ci_low"], d["mde_ci_high"]
    from helpers.metrics import mde_interval

    return mde_interval(d["mde"], n_seeds)


def debugging_comparison(figures_root: str | Path = REFERENCE_DIR,
                         profiles=COMPARED_PROFILES) -> str:
    """Paper 2, section 4.3 beside the committed runs: test accuracy of the original, the control and
    the debugged model (mean +- std over seeds), the paired difference with its 95 % interval over seeds
    and test images, the paired t-test, and its minimum detectable effect with that MDE's own interval."""
    runs = committed_runs(figures_root, profiles)
    lines = ["| run | original test accuracy | control (CE only) | debugged "
             f"| debugged - control {DIFFERENCE_INTERVAL}, paired t-test p | MDE [95 % CI from the seeds' SD] "
             "| chosen (l1, l2) |",
             "|---|---|---|---|---|---|---|",
             "| paper (VGG16, CUB-200, one run each) | 69.48 % | 70.2 % | 70.64 % "
             "| +0.44 pt, no interval | - | (1e-3, 2e-5) |"]
    for p in profiles:
        d = runs[p].get("debugging")
        if not d or "difference" not in d:
            lines.append(f"| `{p}` | {NOT_RUN_BY_DESIGN.get(p, 'not run yet')} | | | | | |")
            continue
        dif, de, co = d["difference"], d["debugged"], d["control"]
        lo, hi = mde_bounds(dif, de["n_seeds"])
        lines.append(f"| `{p}` ({de['n_seeds']} seeds) | {100 * d['original']['test_accuracy']:.2f} % | "
                     f"{100 * co['test_accuracy_mean']:.2f} +- {100 * co['test_accuracy_std']:.2f} % | "
                     f"{100 * de['test_accuracy_mean']:.2f} +- {100 * de['test_accuracy_std']:.2f} % | "
                     f"{points(dif['mean'])} pt [{points(dif['hier_ci_low'])}, {points(dif['hier_ci_high'])}], "
                     f"p = {dif['p_value']:.2f} | {100 * dif['mde']:.2f} pt [{100 * lo:.2f}, {100 * hi:.2f}] | "
                     f"({d['chosen']['l1']:g}, {d['chosen']['l2']:g}) |")
    return "\n".join(lines)


def paper_comparison(figures_root: str | Path = REFERENCE_DIR, default_profile: str = "digits") -> str:
    """The full paper-vs-companion tables (docs/results.md): paper 1's CIFAR-10 and ImageNet tables, paper 2's
    Table 1 and debugging result, each beside the committed runs, then the default profile's headline table."""
    root = Path(figures_root)
    parts = [comparison_table(root), "", "Paper 1 on real photos with a pretrained model: its ImageNet tables "
             "(InceptionV3 fine-tuned on 50 / 100 ImageNet classes) beside `cub100` (SqueezeNet 1.1 on 100 bird "
             "species; 726 validation and 726 test photos the model never saw): a different model, dataset and scale, "
             "the nearest setting we can run:", "",
             comparison_table(root, PAPER1_IMAGENET_PROFILES, ("ImageNet-50 / InceptionV3 (Table 5)",
                                                               "ImageNet-100 / InceptionV3 (Table 6)")), "",
             "Paper 2, Table 1 (misclassification detection with CFE filters; "
             "the paper's numbers are VGG16 on CUB-200, a different model and dataset; ours are test-split counts "
             "with out-of-fold class means, see notebook 04):", "", table1_comparison(root), "",
             "Paper 2, model debugging (section 4.3; the paper's numbers are VGG16 on CUB-200; ours are test "
             "accuracies of the best-validation epoch, paired seeds, see notebook 05):", "", debugging_comparison(root)]
    f = root / default_profile / "metrics.json"
    if f.is_file():
        m = json.loads(f.read_text())
        acc = m.get("model", {}).get("accuracy", {})
        parts += ["", f"Every detector on the default profile (`{default_profile}`, model test accuracy "
                  f"{acc.get('test', float('nan')):.3f}), on the same predictions; from "
                  f"the committed reference `tests/reference/{default_profile}/metrics.json`:", "", headline_table(m)]
    return "\n".join(parts)


#: the README's results at a glance: each committed profile, what it runs, and which table of paper 1 it
#: is read against (the nearest setting; cub100 is real photos with a pretrained net, like paper 1's ImageNet)
GLANCE_PROFILES = {
    "digits": ("small CNN, scikit-learn's 8x8 digits", "CIFAR-10 / ResNet20 (Table 4)"),
    "cifar10": ("ResNet20 trained from scratch, CIFAR-10", "CIFAR-10 / ResNet20 (Table 4)"),
    "cifar10-paper": ("the authors' ResNet20 and recipe, CIFAR-10", "CIFAR-10 / ResNet20 (Table 4)"),
    "cifar10-pretrained": ("pretrained ResNet20 (akamaster), CIFAR-10", "CIFAR-10 / ResNet20 (Table 4)"),
    "cub100": ("ImageNet SqueezeNet 1.1 fine-tuned, 100 CUB bird species", "ImageNet-100 / InceptionV3 (Table 6)"),
}


def _auroc_pm(det: dict, key: str) -> str:
    """Validation AUROC +- half its 95 % bootstrap interval."""
    if key not in det:
        return "-"
    v = det[key]["val"]
    return f"{v['auroc']:.3f} ± {(v['auroc_ci_high'] - v['auroc_ci_low']) / 2:.2f}"


#: the CFE error scores the glance table chooses from on validation, with their short names
CFE_SCORE_NAMES = {"cfe_recall": "1 - recall", "cfe_f1": "1 - F1", "cfe_precision": "1 - precision",
                   "cfe_outside": "outside G_c", "cfe_mask_size": "mask size"}


def glance_tables(figures_root: str | Path = REFERENCE_DIR, profiles=tuple(GLANCE_PROFILES),
                  settings: dict | None = None) -> str:
    """Two small tables, one per paper: each committed profile's headline numbers beside the paper's and
    beside the MSP baseline (the max softmax probability, which neither paper reports).  Table 1's gate
    is each profile's own (``settings``: profile -> :func:`cfe_settings`, from the profiles by default)."""
    runs = committed_runs(figures_root, profiles)
    settings = settings or {p: cfe_settings(p) for p in profiles}
    lines = ["**Paper 1**: validation AUROC of each error detector, ± half its 95 % bootstrap interval, which "
             "resamples the validation images only (one training seed per profile); MSP is the one-pass baseline "
             "the paper did not report.", "",
             "| profile: model, data | model test accuracy | conductance | LCR | joint NN (both) | MSP (baseline) | "
             "paper: conductance / LCR / joint NN |", "|---|---|---|---|---|---|---|"]
    for p in profiles:
        label, anchor = GLANCE_PROFILES.get(p, (p, "CIFAR-10 / ResNet20 (Table 4)"))
        paper = PAPER[anchor]
        setting, table = anchor.rstrip(")").split(" (")  # "CIFAR-10 / ResNet20", "Table 4"
        ref = f"{paper['conductance'][0]:.3f} / {paper['lcr'][0]:.3f} / {paper['joint_nn'][0]:.3f} ({setting}, {table})"
        m = runs[p]
        if not m.get("detectors"):
            lines.append(f"| `{p}`: {label} | not run yet | | | | | {ref} |")
            continue
        det, acc = m["detectors"], m.get("model", {}).get("accuracy", {})
        lines.append(f"| `{p}`: {label} | {acc.get('test', float('nan')):.3f} | " + " | ".join(
            _auroc_pm(det, k) for k in ("conductance", "lcr", "joint_nn", "msp")) + f" | {ref} |")
    t1 = PAPER2_TABLE1["avg_recall"]
    # a paper-1 profile (notebooks 00-03 only) has no row in paper 2's table
    profiles = [p for p in profiles if not (runs[p].get("detectors") and not (runs[p].get("cfe")
                                                                                or runs[p].get("debugging")))]
    lines += ["", "**Paper 2**: Table 1's first row (average recall, "
              f"{_settings_phrase('frequency', profiles, settings)}, {_settings_phrase('skip', profiles, settings)}"
              ": only predictions with max probability <= skip are flagged) on the test split, beside as many "
              "flags in that gate at random (mean [95 % interval]) or on the least confident predictions; the CFE "
              f"score chosen on validation (of {', '.join(CFE_SCORE_NAMES.values())}): its test AUROC (MSP's); "
              "debugging: debugged minus CE-only control test accuracy over paired seeds, and the t-test's minimum "
              "detectable effect (MDE).", "",
              "| profile | errors detected (share) / new errors | random flags in the gate "
              "| least confident in the gate | CFE score chosen on val: test AUROC (MSP) "
              f"| debugged - control {DIFFERENCE_INTERVAL}, seeds, MDE [95 % CI] |", "|---|---|---|---|---|---|",
              f"| paper: VGG16, CUB-200 | {t1[1]} ({t1[2]:.0%}) / {t1[3]} | not reported | not reported "
              "| not reported | +0.44 pt (one run each, no interval) |"]
    for p in profiles:
        m = runs[p]
        r = m.get("cfe", {}).get("table1", {}).get("avg_recall")
        det = m.get("detectors", {})
        d = m.get("debugging", {}).get("difference")
        cells = ["not run yet"] if r is None else [
            f"{r['errors_detected']} ({r['errors_detected_fraction']:.0%}) / {r['new_errors']}"]
        if r is not None and "gate_random_expected" in r:
            cells += [f"{r['gate_random_expected']:.1f} [{r['gate_random_low']:.0f}, {r['gate_random_high']:.0f}]",
                      f"{r['gate_msp_caught']}"]
        else:
            cells += ["run predates the control"] * 2
        scores = [k for k in CFE_SCORE_NAMES if k in det]
        if scores:
            best = max(scores, key=lambda k: det[k]["val"]["auroc"])
            cells.append(f"{CFE_SCORE_NAMES[best]} {det[best]['test']['auroc']:.3f} "
                         f"({det['msp']['test']['auroc']:.3f})")
        else:
            cells.append("not run yet")
        if d is None:
            cells.append("not run")
        elif "hier_ci_low" in d:
            n = m["debugging"]["debugged"]["n_seeds"]
            lo, hi = mde_bounds(d, n)
            cells.append(f"{points(d['mean'])} pt [{points(d['hier_ci_low'])}, {points(d['hier_ci_high'])}], "
                         f"{n} seeds, MDE {100 * d['mde']:.2f} pt [{100 * lo:.2f}, {100 * hi:.2f}]")
        else:
            cells.append(f"{points(d['mean'])} pt [{points(d['ci_low'])}, {points(d['ci_high'])}] over test "
                         f"images only, {m['debugging']['debugged']['n_seeds']} seeds (before the controls)")
        lines.append(f"| `{p}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(figures_root: str | Path = REFERENCE_DIR, default_profile: str = "digits") -> str:
    """The README's generated block: results at a glance (:func:`glance_tables`), the default profile first;
    the full tables are in docs/results.md (:func:`paper_comparison`)."""
    profiles = [default_profile] + [p for p in GLANCE_PROFILES if p != default_profile]
    return glance_tables(figures_root, tuple(profiles))


README_BEGIN = "<!-- comparison:begin (generated by `python -m helpers.tools.report --readme`) -->"
README_END = "<!-- comparison:end -->"


def _detectors_of(root: Path, profile: str) -> str:
    f = root / profile / "metrics.json"
    return headline_table(json.loads(f.read_text())) if f.is_file() else f"`{profile}`: not run yet"


#: the generated blocks of docs/: ``<!-- generated:begin NAME [ARG] -->`` ... ``<!-- generated:end -->``;
#: each takes the references' root folder and the block's argument (a profile, or None)
GENERATORS = {
    "glance": lambda root, arg: readme_block(root),
    "paper-comparison": lambda root, arg: paper_comparison(root),
    "detectors": lambda root, arg: _detectors_of(root, arg),
}
GENERATED = re.compile(r"<!-- generated:begin (?P<name>[\w-]+)(?: (?P<arg>[\w.-]+))? -->\n"
                       r"(?P<body>.*?)<!-- generated:end -->", re.S)


def render_generated(text: str, figures_root=REFERENCE_DIR) -> str:
    """``text`` with the body of each generated block regenerated; an unknown NAME is an error."""
    root = Path(figures_root)

    def body(mo):
        name, arg = mo["name"], mo["arg"]
        if name not in GENERATORS:
            raise ValueError(f"generated block {name!r}: unknown (known: {', '.join(GENERATORS)})")
        head = mo.group(0)[:mo.start("body") - mo.start()]
        return head + GENERATORS[name](root, arg) + "\n<!-- generated:end -->"

    return GENERATED.sub(body, text)


def doc_files(repo_root: str | Path = REPO_ROOT) -> list[Path]:
    """README.md and every docs/**/*.md: the pages whose numbers are tied to the references."""
    root = Path(repo_root)
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


def refresh_readme(readme: str | Path = REPO_ROOT / "README.md", figures_root=REFERENCE_DIR,
                   docs_dir: str | Path | None = "beside") -> bool:
    """Replace the README's generated block with :func:`readme_block`, and every generated block of
    the README and of ``docs_dir`` ("beside": the readme's docs/ folder, where there is one) with
    :func:`render_generated`; True if any file changed."""
    path = Path(readme)
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{path}: no comparison block ({README_BEGIN} ... {README_END})")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    new = render_generated(head + README_BEGIN + "\n" + readme_block(figures_root) + "\n" + README_END + tail,
                           figures_root)
    changed = new != text
    if changed:
        atomic_write_text(path, new)
    docs = path.parent / "docs" if docs_dir == "beside" else (Path(docs_dir) if docs_dir else None)
    for f in sorted(docs.rglob("*.md")) if docs is not None and docs.is_dir() else []:
        old = f.read_text()
        new = render_generated(old, figures_root)
        if new != old:
            atomic_write_text(f, new)
            changed = True
    return changed


# ----------------------------------------------------------------------------- numbers quoted in prose
#: a number (optionally signed, with thousands commas) immediately followed by its annotation; a sign
#: counts only where a word starts ("0.54-0.58" is a range, not -0.58)
ANNOTATION = re.compile(r"(?P<num>(?:(?<![\w.>)\]])[+\-\u2212])?\d[\d,]*(?:\.\d+)?)?"
                        r"<!-- m:(?P<profile>[\w.-]+):(?P<expr>.*?) -->")
#: a token of an annotation's expression: a metrics key (``PROFILE@key``: another profile's), a number, an operator
_TOKEN = re.compile(r"\s*(?:(?P<key>(?:[A-Za-z0-9][\w.-]*@)?[A-Za-z_][\w.]*)|(?P<num>\d+(?:\.\d+)?)|(?P<op>[-+*/(),]))")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _random_p(side: int):
    def p(caught, n, errors, flagged):
        from helpers.metrics import random_flags_p

        return random_flags_p(caught, n, errors, flagged)[side]
    return p


def _mde_bound(side: int):
    def bound(mde, n_seeds):
        from helpers.metrics import mde_interval

        return mde_interval(mde, n_seeds)[side]
    return bound


def _sign_test_p(wins, losses):
    from helpers.metrics import sign_test

    return sign_test(wins, losses)


#: the statistics an annotation may compute from recorded numbers (helpers.metrics): the comparisons a
#: verdict needs that a committed run did not record itself
FUNCTIONS = {
    "random_p_more": _random_p(0),    # (caught, gate_n, gate_errors, flags): P(random flags catch >= caught)
    "random_p_fewer": _random_p(1),   # ... P(random flags catch <= caught)
    "sign_test_p": _sign_test_p,      # (wins, losses): two-sided sign test
    "mde_low": _mde_bound(0),         # (mde, n_seeds): the MDE's 95 % interval, from the chi-square law of an SD
    "mde_high": _mde_bound(1),
    "max": max,                       # of several values: one verdict for several detectors
    "min": min,
}

#: verdict annotations ``<!-- v:PROFILE:KIND(ARG, ...) -->`` (:func:`verdict_problems`): KIND -> (the test of
#: the evaluated ARGs, the claim in words for the messages, the words that state that verdict in prose)
VERDICTS = {
    "inside": (lambda x, lo, hi: lo <= x <= hi, "{0:.4g} inside [{1:.4g}, {2:.4g}]",
               ("inside", "within", "at chance", "includes", "include", "including", "includes 0", "including 0",
                "about as many", "as many as")),
    "outside": (lambda x, lo, hi: x < lo or x > hi, "{0:.4g} outside [{1:.4g}, {2:.4g}]",
                ("excludes", "exclude", "excluding", "outside")),
    "greater": (lambda a, b: a > b, "{0:.4g} > {1:.4g}",
                ("beats", "beat", "above", "above chance", "more", "more than", "higher", "exceeds")),
    "less": (lambda a, b: a < b, "{0:.4g} < {1:.4g}",
             ("below", "below chance", "fewer", "fewer than", "lower", "less than")),
    "at_most": (lambda a, b: a <= b, "{0:.4g} <= {1:.4g}",
                ("do not beat", "does not beat", "no more than", "not more than", "no better than")),
    "overlap": (lambda lo1, hi1, lo2, hi2: lo1 <= hi2 and lo2 <= hi1, "[{0:.4g}, {1:.4g}] overlaps [{2:.4g}, {3:.4g}]",
                ("overlap", "overlapping", "overlaps")),
    "significant": (lambda p: p < 0.05, "p = {0:.4g} < 0.05", ("significant", "significantly")),
    "not_significant": (lambda p: p >= 0.05, "p = {0:.4g} >= 0.05",
                        ("not significant", "not significantly", "no significant", "none significant")),
}
_PHRASES = sorted(((ph, kind) for kind, (_, _, phs) in VERDICTS.items() for ph in phs), key=lambda x: -len(x[0]))
_PHRASE = re.compile(r"(?<![\w-])(" + "|".join(re.escape(ph) for ph, _ in _PHRASES) + r")(?![\w-])", re.I)
_PHRASE_KIND = {ph: kind for ph, kind in _PHRASES}
VERDICT = re.compile(r"<!-- v:(?P<profile>[\w.,-]+):(?P<claim>.*?) -->")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def metric_value(metrics, key: str) -> float:
    """A dotted key of metrics.json (``cfe.table1.recall_lt_0.3.new_errors``: a key may itself hold a
    dot; list items by index, ``debugging.grid.1.val_accuracy``) as a float."""
    parts, node = key.split("."), metrics
    while parts:
        if isinstance(node, list):
            try:
                node = node[int(parts.pop(0))]
            except (ValueError, IndexError):
                raise KeyError(key) from None
            continue
        for n in range(len(parts), 0, -1):  # the longest key that matches
            k = ".".join(parts[:n])
            if isinstance(node, dict) and k in node:
                node, parts = node[k], parts[n:]
                break
        else:
            raise KeyError(key)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise KeyError(f"{key} is not a number ({node!r})")
    return float(node)


def _key_value(key: str, metrics: dict, others) -> float:
    """A key of ``metrics``, or ``PROFILE@key``: a key of another profile's committed metrics (``others``:
    profile -> metrics or None), so that a sentence comparing two runs is checked against both."""
    profile, at, rest = key.partition("@")
    if not at:
        return metric_value(metrics, key)
    found = others[profile] if others is not None else None
    if found is None:
        raise KeyError(f"{key}: no committed metrics for profile {profile!r}")
    return metric_value(found, rest)


def _expression(expr: str, metrics: dict, functions, others=None) -> ast.Expression:
    """EXPR with every metrics key replaced by its value, parsed; names in ``functions`` stay names."""
    pos, out, expr = 0, [], expr.rstrip()
    while pos < len(expr):
        mo = _TOKEN.match(expr, pos)
        if not mo:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        pos = mo.end()
        if mo["key"] and mo["key"] in functions and expr[pos:].lstrip().startswith("("):
            out.append(mo["key"])
        elif mo["key"]:
            value = _key_value(mo["key"], metrics, others)
            if not math.isfinite(value):
                raise ValueError(f"{mo['key']} is {value}, not a finite number")
            out.append(repr(value))
        else:
            out.append(mo["num"] or mo["op"])
    try:
        return ast.parse(" ".join(out), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expr!r} as keys and constants joined by + - * / and "
                         f"{', '.join(functions)}") from None


def _value(node, expr: str) -> float:
    if isinstance(node, ast.Expression):
        return _value(node.body, expr)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, expr), _value(node.right, expr))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return -_value(node.operand, expr) if isinstance(node.op, ast.USub) else _value(node.operand, expr)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
            and not node.keywords):
        try:
            return float(FUNCTIONS[node.func.id](*(_value(a, expr) for a in node.args)))
        except TypeError as exc:
            raise ValueError(f"{node.func.id} in {expr!r}: {exc}") from None
    raise ValueError(f"not allowed in {expr!r}: {ast.dump(node)}")


def evaluate(expr: str, metrics: dict, others=None) -> float:
    """EXPR of an annotation: metrics keys and constants joined by + - * / and parentheses, and the
    statistics of :data:`FUNCTIONS` of them (``random_p_more(...)``, ``sign_test_p(...)``, ...).
    ``PROFILE@key`` reads another profile's metrics from ``others`` (profile -> metrics)."""
    return _value(_expression(expr, metrics, FUNCTIONS, others), expr)


def evaluate_verdict(claim: str, metrics: dict, others=None) -> tuple[str, bool, str]:
    """CLAIM of a verdict annotation, ``KIND(ARG, ...)`` with KIND in :data:`VERDICTS` and each ARG an
    annotation expression: (KIND, whether it holds, the comparison in numbers)."""
    head = re.match(r"\s*(\w+)\s*\(", claim)
    if not head or head.group(1) not in VERDICTS:
        raise ValueError(f"a verdict is one of {', '.join(VERDICTS)} applied to expressions, not {claim!r}")
    tree = _expression(claim, metrics, {**FUNCTIONS, **VERDICTS}, others)
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in VERDICTS):
        raise ValueError(f"a verdict is one of {', '.join(VERDICTS)} applied to expressions, not {claim!r}")
    kind = call.func.id
    test, words, _ = VERDICTS[kind]
    args = [_value(a, claim) for a in call.args]
    try:
        holds = bool(test(*args))
    except TypeError:
        raise ValueError(f"{kind} takes {test.__code__.co_argcount} values, got {len(args)}") from None
    return kind, holds, words.format(*args)


def printed_matches(printed: str, value: float) -> bool:
    """True when ``printed`` is ``value`` rounded to the printed number of decimals (a tie either way)."""
    text = printed.replace(",", "").replace("\u2212", "-")
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    return math.isfinite(value) and abs(float(text) - value) <= 0.5 * 10 ** -decimals * (1 + 1e-9) + 1e-12


class _Metrics(dict):
    """profile -> its committed metrics (None where there are none), read once."""

    def __init__(self, root):
        super().__init__()
        self.root = Path(root)

    def __missing__(self, profile):
        f = self.root / profile / "metrics.json"
        self[profile] = json.loads(f.read_text()) if f.is_file() else None
        return self[profile]


def number_problems(text: str, figures_root=REFERENCE_DIR, where: str = "") -> list[str]:
    """Every annotated number of ``text`` that is not its metric at the printed precision, every
    annotation with no number right before it, with an unknown profile or key, or that cannot be read."""
    root, cache, out = Path(figures_root), _Metrics(figures_root), []
    for mo in ANNOTATION.finditer(text):
        line = text.count("\n", 0, mo.start()) + 1
        loc = f"{where}:{line}: {mo.group(0)}"
        if not mo["num"]:
            out.append(f"{loc}: no number right before the annotation")
            continue
        prof = mo["profile"]
        if cache[prof] is None:
            out.append(f"{loc}: no committed metrics for profile {prof!r} ({root / prof / 'metrics.json'})")
            continue
        try:
            value = evaluate(mo["expr"], cache[prof], cache)
        except (KeyError, ValueError, ZeroDivisionError) as exc:
            out.append(f"{loc}: {type(exc).__name__}: {exc}")
            continue
        if not printed_matches(mo["num"], value):
            out.append(f"{loc}: printed {mo['num']}, the committed metrics give {value:.6g}")
    return out


def verdict_words(text: str) -> tuple[str, str] | None:
    """The verdict words nearest the end of ``text`` (comments left out): (the words, their KIND of
    :data:`VERDICTS`), the longest where two end together ("not significant", not "significant"); None
    when there are none."""
    tail = re.sub(r"\s+", " ", _COMMENT.sub("", text))[-100:]
    found = [(m.end(), len(m.group(0)), m.group(0).lower()) for m in _PHRASE.finditer(tail)]
    if not found:
        return None
    words = max(found)[2]
    return words, _PHRASE_KIND[words]


def verdict_problems(text: str, figures_root=REFERENCE_DIR, where: str = "") -> list[str]:
    """Every verdict annotation ``<!-- v:PROFILES:KIND(ARG, ...) -->`` of ``text`` (PROFILES: one profile,
    or several joined by commas, for which the verdict must hold alike) whose comparison does not hold on
    a profile's committed metrics, whose words before it (since the previous verdict annotation; a run of
    annotations shares its words) state another KIND, or that has no verdict words, an unknown profile or
    key, or cannot be read."""
    root, cache, out = Path(figures_root), _Metrics(figures_root), []
    prev_end, prev_words = 0, None
    for mo in VERDICT.finditer(text):
        line = text.count("\n", 0, mo.start()) + 1
        loc = f"{where}:{line}: {mo.group(0)}"
        before = text[prev_end:mo.start()]
        words = verdict_words(before) or (prev_words if prev_words and not before.strip() else None)
        prev_end, prev_words = mo.end(), words
        for prof in mo["profile"].split(","):
            if cache[prof] is None:
                out.append(f"{loc}: no committed metrics for profile {prof!r} ({root / prof / 'metrics.json'})")
                continue
            try:
                kind, holds, numbers = evaluate_verdict(mo["claim"], cache[prof], cache)
            except (KeyError, ValueError, ZeroDivisionError) as exc:
                out.append(f"{loc}: {prof}: {type(exc).__name__}: {exc}")
                continue
            if words is None:
                out.append(f"{loc}: no verdict words right before the annotation "
                           f"(one of {', '.join(VERDICTS[kind][2])})")
                break
            if words[1] != kind:
                out.append(f"{loc}: the prose says {words[0]!r} ({words[1]}), the annotation checks {kind}")
                break
            if not holds:
                out.append(f"{loc}: the verdict {words[0]!r} does not hold on the committed metrics of {prof}: "
                           f"{numbers} is false")
    return out


def generated_problems(text: str, figures_root=REFERENCE_DIR, where: str = "") -> list[str]:
    """Every generated block of ``text`` whose body is not what the references generate now."""
    out = []
    for mo in GENERATED.finditer(text):
        try:
            want = render_generated(mo.group(0), figures_root)
        except ValueError as exc:
            out.append(f"{where}: {exc}")
            continue
        if want != mo.group(0):
            line = text.count("\n", 0, mo.start()) + 1
            out.append(f"{where}:{line}: generated block {mo['name']} {mo['arg'] or ''} differs from the "
                       "references; run `python -m helpers.tools.report --readme`")
    return out


def docs_problems(repo_root: str | Path = REPO_ROOT, figures_root=REFERENCE_DIR) -> list[str]:
    """Every number of README.md and docs/ that disagrees with the committed metrics."""
    out = []
    for f in doc_files(repo_root):
        text, rel = f.read_text(), f.relative_to(repo_root)
        out += (generated_problems(text, figures_root, str(rel)) + number_problems(text, figures_root, str(rel))
                + verdict_problems(text, figures_root, str(rel)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output_dirs", nargs="*", help="figures/<profile> folders to rebuild report.md in")
    ap.add_argument("--readme", action="store_true",
                    help="refresh the generated blocks of README.md and docs/ from the committed references")
    ap.add_argument("--check-docs", action="store_true",
                    help="list the numbers and verdicts of README.md and docs/ that disagree with the committed "
                         "metrics")
    a = ap.parse_args(argv)
    for d in a.output_dirs:
        print(write_report(d))
    if a.readme:
        print("README / docs updated" if refresh_readme() else "README / docs already up to date")
    if a.check_docs:
        problems = docs_problems()
        print("\n".join(problems) if problems else "README.md and docs/: every number and verdict agrees with the "
              "references")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
