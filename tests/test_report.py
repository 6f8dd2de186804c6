"""report.md and the README comparison table are generated, never hand-edited."""
import json
import shutil
import subprocess

import pytest

from helpers.paths import REFERENCE_DIR, REPO_ROOT
from helpers.tools.report import README_BEGIN, README_END, build_report, comparison_table, readme_block, refresh_readme

FIG = REPO_ROOT / "figures"


def _locally_rerun(folder) -> bool:
    """True when figures/<profile>/ is not the committed run (a local `make figures` or Jupyter run
    rewrote it, or this is no git checkout): its report.md then belongs to that run."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", str(folder)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return True
    return out.returncode != 0 or bool(out.stdout.strip())


@pytest.mark.parametrize("profile", sorted(p.parent.name for p in FIG.glob("*/report.md")))
def test_committed_report_is_regenerated_from_its_files(profile):
    if _locally_rerun(FIG / profile):
        pytest.skip(f"figures/{profile}/ differs from the commit (a local run rewrote it)")
    assert (FIG / profile / "report.md").read_text() == build_report(FIG / profile)


def test_readme_comparison_block_is_generated_from_the_references():
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert block == readme_block(REFERENCE_DIR)


@pytest.mark.parametrize("profile", sorted(p.parent.name for p in FIG.glob("*/metrics.json")))
def test_the_committed_figures_are_the_reference_run(profile):
    """figures/<profile>/ of the commit and tests/reference/<profile>/ are the same run (`make reference`)."""
    if _locally_rerun(FIG / profile):
        pytest.skip(f"figures/{profile}/ differs from the commit (a local run rewrote it)")
    assert json.loads((FIG / profile / "metrics.json").read_text()) == json.loads(
        (REFERENCE_DIR / profile / "metrics.json").read_text())


def test_report_reflects_metrics(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    rep = {"auroc": 0.9, "auroc_ci_low": 0.8, "auroc_ci_high": 0.95, "aupr_error": 0.5, "fpr_at_95_tpr": 0.3,
           "aurc": 0.02, "correct_recall": 0.85, "wrong_recall": 0.8}
    (d / "metrics.json").write_text(json.dumps({"profile": "p", "model": {"accuracy": {"val": 0.5}},
                                                "detectors": {"lcr": {"val": rep, "test": rep}}}))
    (d / "accuracy.md").write_text("| split | accuracy |\n")
    text = build_report(d)
    assert "| LCR (label change rate) | 0.900 [0.800, 0.950] | 0.900 | 0.850 | 0.800 |" in text
    assert "val 0.500" in text and "### accuracy" in text


def test_comparison_marks_missing_runs_not_run_yet(tmp_path):
    (tmp_path / "digits").mkdir()
    shutil.copy(FIG / "digits" / "metrics.json", tmp_path / "digits" / "metrics.json")
    table = comparison_table(tmp_path)
    assert "not run yet" in table  # cifar10 absent here
    assert "0.927" in table  # the paper's conductance AUROC (Table 4)
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{README_BEGIN}\nold\n{README_END}\ny\n")
    assert refresh_readme(readme, tmp_path) is True
    assert readme_block(tmp_path) in readme.read_text() and readme.read_text().endswith("y\n")
    assert refresh_readme(readme, tmp_path) is False


def test_stage_table_sums_chunks_and_marks_unlogged_memory():
    from helpers.tools.report import stage_table

    log = {"stages": {
        "lcr_preds-a": {"stage": "lcr_preds", "seconds": 60.0, "peak_rss_mb": 1024.0, "threads": 2, "device": "cpu"},
        "lcr_preds-b": {"stage": "lcr_preds", "seconds": 120.0, "peak_rss_mb": 2048.0, "threads": 2, "device": "cpu"},
        "model-c": {"stage": "model", "seconds": 30.0, "peak_rss_mb": None, "threads": None, "device": "cpu"}},
        "notebooks": {"00_data_and_model.ipynb": 12.0}}
    text = stage_table(log)
    assert "| lcr_preds | 2 | 3.0 min | 2.00 GB | cpu / 2 |" in text
    assert "| model | 1 | 30.0 s | n/a | cpu / ? |" in text
    assert text.index("| model |") < text.index("| lcr_preds |")  # pipeline order
    assert "| total | 3 | 3.5 min | | |" in text and "00_data_and_model.ipynb 12 s" in text


def test_stage_table_adds_the_units_a_stage_was_joined_from():
    """A stage joined from precompute's units (units_seconds in the stage log) shows their compute with the
    join's, marked and explained under the table."""
    from helpers.tools.report import stage_table

    log = {"stages": {
        "lcr_screen-a": {"stage": "lcr_screen", "seconds": 0.1, "units_seconds": 119.9, "threads": 1, "device": "cpu"},
        "predictions-b": {"stage": "predictions", "seconds": 60.0, "threads": 2, "device": "cpu"}}}
    text = stage_table(log)
    assert "| lcr_screen | 1 | 2.0 min * |" in text and "| predictions | 1 | 1.0 min |" in text
    assert "| total | 2 | 3.0 min | | |" in text and "summed compute time" in text
    assert "summed compute time" not in stage_table({"stages": {"predictions-b": log["stages"]["predictions-b"]}})


def test_generated_tables_name_every_detector_as_the_figures_do():
    """One mapping (helpers.names) for figures and tables: no metrics key shows up raw in a row label."""
    import re

    from helpers.names import display_name
    from helpers.tools.regression import reference_metrics
    from helpers.tools.report import headline_table

    for profile in ("digits", "cifar10", "cifar10-pretrained", "cub100"):
        metrics = reference_metrics(profile)
        labels = [row.split("|")[1].strip() for row in headline_table(metrics).splitlines()[2:]]
        assert labels and len(labels) == len(set(labels))
        for key in metrics["detectors"]:
            assert display_name(key) in labels
        assert not [lab for lab in labels if re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)+", lab)], labels


def test_a_difference_that_rounds_to_zero_has_no_sign():
    from helpers.tools.report import points

    assert [points(v) for v in (-0.0, -0.00004, 0.00004, 0.0016, -0.0015)] == ["0.00", "0.00", "0.00", "+0.16", "-0.15"]


@pytest.mark.parametrize("profile", sorted(p.parent.name for p in FIG.glob("*/report.md")))
def test_the_report_shows_every_figure_and_table_its_notebooks_wrote(profile):
    text = build_report(FIG / profile)
    missing = [p.name for p in sorted((FIG / profile).glob("*.png")) if f"]({p.name})" not in text]
    missing += [p.name for p in sorted((FIG / profile).glob("*.md")) if p.name != "report.md"
                and (FIG / profile / p.name).read_text().strip().splitlines()[0] not in text]
    assert not missing, missing


def test_table1_labels_come_from_each_profiles_settings():
    """digits runs Table 1 with skip = tau = 0.5: its gate is labelled so, in the README's glance table and
    in docs/results.md's Table 1, never with the paper's 0.9; other settings give other labels."""
    from helpers.tools.report import cfe_settings, glance_tables, table1_comparison

    assert cfe_settings("digits") == {"skip": 0.5, "tau": 0.5, "frequency": 0.15, "recall_threshold": 0.3}
    assert cfe_settings("cub100")["skip"] == 0.9
    glance = glance_tables(REFERENCE_DIR)
    assert "skip 0.9 (`digits`: 0.5)" in glance and "frequency 0.15," in glance
    table = table1_comparison(REFERENCE_DIR)
    settings_row = next(line for line in table.splitlines() if line.startswith("| settings: skip"))
    cells = [c.strip() for c in settings_row.strip("|").split("|")]
    assert cells[1:] == ["0.9 / 0.9 / 0.15 / 0.3"] * 4 + ["0.5 / 0.5 / 0.15 / 0.3"]  # paper, cub100, ..., digits
    assert "skip 0.9" not in table
    other = {p: cfe_settings(p) for p in ("cub100", "cifar10", "cifar10-pretrained", "digits")}
    other["digits"] = {**other["digits"], "skip": 0.7}
    assert "0.7 / 0.5 / 0.15 / 0.3" in table1_comparison(REFERENCE_DIR, settings=other)
    assert "skip 0.9 (`digits`: 0.7)" in glance_tables(REFERENCE_DIR, settings=other)


def test_every_number_carries_one_named_interval():
    """The debugging difference shows its interval over seeds and test images everywhere (never the
    image-only one), with the MDE's own interval; AUROC intervals say that they resample images."""
    from helpers.tools.report import debugging_comparison, glance_tables, headline_table, paper_comparison

    debug, glance = debugging_comparison(REFERENCE_DIR), glance_tables(REFERENCE_DIR)
    for text in (debug, glance):
        assert "[95 % CI over seeds and test images]" in text
        assert "+0.16 pt [-0.16, +0.58]" in text and "[-0.02, +0.33]" not in text          # digits
        assert "+0.05 pt [-0.87, +0.92]" in text and "[-0.69, +0.80]" not in text          # cub100
        assert "0.20 pt [0.13, 0.49]" in text                                              # cifar10-pretrained MDE
    assert "95% CI" not in paper_comparison(REFERENCE_DIR) + glance
    assert "[95 % CI over val images]" in headline_table(json.loads((REFERENCE_DIR / "digits" / "metrics.json")
                                                                    .read_text()))
    assert "resamples the validation images only (one training seed per profile)" in glance


def test_the_cfe_score_is_chosen_on_validation_and_reported_on_test():
    """Of the five CFE scores (mask size included) the best on validation, shown with its TEST AUROC beside
    MSP's: mask size on both CIFAR-10 profiles, 1 - precision on cub100."""
    from helpers.tools.report import glance_tables

    rows = {line.split("|")[1].strip(): line for line in glance_tables(REFERENCE_DIR).splitlines()
            if line.startswith("| `")}
    assert "| mask size 0.701 (0.863) |" in rows["`cifar10-pretrained`"]
    assert "| mask size 0.694 (0.870) |" in rows["`cifar10`"]
    assert "| 1 - precision 0.586 (0.883) |" in rows["`cub100`"]


def test_a_paper1_only_profile_has_no_row_in_paper2s_glance_table(tmp_path):
    """A profile that ran notebooks 00-03 only is in paper 1's glance table and not in paper 2's; a profile
    with nothing run is in both, marked "not run yet"."""
    from helpers.tools.report import glance_tables

    m = json.loads((REFERENCE_DIR / "digits" / "metrics.json").read_text())
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "metrics.json").write_text(json.dumps({k: m[k] for k in ("profile", "model", "detectors")}))
    text = glance_tables(tmp_path, ("p1", "never"), settings={p: {"skip": 0.9, "frequency": 0.15}
                                                              for p in ("p1", "never")})
    paper1, paper2 = text.split("**Paper 2**")
    assert "| `p1`: p1 | 0.887 |" in paper1 and "| `never`: never | not run yet |" in paper1
    assert "`p1`" not in paper2 and "| `never` | not run yet |" in paper2
