"""Figures that read on their own: properties of the rendered figures, not pixels."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers import plots  # noqa: E402


@pytest.fixture(autouse=True)
def paper_style():
    """The notebooks' style (savefig.dpi 150 among it), undone after each test."""
    with matplotlib.rc_context():
        plots.set_style()
        yield


LONG = "correct: 093.Red_bellied_Woodpecker -> 093.Red_bellied_Woodpecker (p 1.00)"  # a CUB title


def _images(n, rng):
    return [rng.uniform(size=(32, 32, 3)) for _ in range(n)]


def _no_title_runs_into_the_row_above(fig, n_cols, gap_pt=4):
    """At the dpi the figures are saved with: each title ends at least ``gap_pt`` below the images above
    (checked at the saving dpi: a wrapped cub100 title can clear them at layout time and overprint them once
    saved)."""
    dpi = plots.plt.rcParams["savefig.dpi"]
    fig.set_dpi(dpi)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.images]  # image panels in row order (colour bars hold no image)
    rows = [panels[i:i + n_cols] for i in range(0, len(panels), n_cols)]
    renderer = fig.canvas.get_renderer()
    for above, row in zip(rows, rows[1:]):
        bottom_of_images_above = min(ax.get_window_extent(renderer).y0 for ax in above)
        top_of_titles = max(ax.title.get_window_extent(renderer).y1 for ax in row)
        assert top_of_titles + gap_pt * dpi / 72 <= bottom_of_images_above, (top_of_titles, bottom_of_images_above)


@pytest.mark.parametrize("titles", [["correct: 3 -> 3 (p 0.98)"] * 3,
                                    [LONG, "WRONG: 025.Pied_billed_Grebe -> 020.Gadwall (p 1.00)"]])
def test_mc_overlay_titles_never_overprint_the_images_above(titles):
    rng = np.random.default_rng(0)
    ex = [{"image": img, "maps": rng.uniform(size=(4, 4)), "title": title,
           "overlay_title": "20 MC filters; recall 0.61, F1 0.71"}
          for img, title in zip(_images(len(titles), rng), titles)]
    fig = plots.mc_overlays(ex)
    _no_title_runs_into_the_row_above(fig, 2)
    assert sum(1 for ax in fig.axes if ax.get_ylabel() == "summed activation") == len(titles)  # a bar per row


def test_gradcam_titles_never_overprint_the_images_above():
    """cub100's long species names in the titles do not run into the row above."""
    rng = np.random.default_rng(0)
    ex = [{"image": img, "cams": [rng.uniform(size=(4, 4))] * 2,
           "titles": ["true 090.Cedar_Waxwing", "original: 090.Cedar_Waxwing (p 0.55)",
                      "confidence raised: true 090.Cedar_Waxwing, now 090.Cedar_Waxwing (p 0.93)"]}
          for img in _images(3, rng)]
    _no_title_runs_into_the_row_above(plots.gradcam_pairs(ex), 3)


def test_mask_size_legend_is_neutral_and_labels_clear_the_bars():
    """The legend explains inside / outside, not a class colour; each bar's label sits above the bar."""
    rng = np.random.default_rng(0)
    n = 300
    table = pd.DataFrame({"n_mc": rng.integers(3, 10, n), "recall": rng.uniform(0.5, 1, n),
                          "precision": rng.uniform(0.7, 1, n), "correct": rng.uniform(size=n) > 0.3})
    fig = plots.mask_size_vs_agreement(table)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[1]
    colours = {tuple(float(c) for c in np.round(h.get_facecolor()[:3], 2)) for h in ax.get_legend().legend_handles}
    assert colours == {(0.45, 0.45, 0.45)}  # grey: the class colours are on the x axis, not in the legend
    legend_box = ax.get_legend().get_window_extent(renderer)
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert not box.overlaps(legend_box), text.get_text()
        assert box.y0 >= max(p.get_window_extent(renderer).y1 for p in ax.patches
                             if abs(p.get_x() + p.get_width() / 2 - text.xy[0]) < 1e-6) - 0.5


def test_msp_is_drawn_on_top_and_unlike_the_chance_line():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    curves = {n: (y, y * rng.random() + rng.random(300)) for n in ("conductance", "lcr", "joint_nn", "joint_nn_msp")}
    curves["msp"] = (y, y * 0.5 + rng.random(300))
    fig = plots.roc_figure(curves)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]  # curves and the diagonal, not the dots
    msp = [ln for ln in lines if ln.get_label().startswith(plots.display_name("msp"))][0]
    chance = [ln for ln in lines if list(ln.get_xdata()) == [0, 1] and list(ln.get_ydata()) == [0, 1]][0]
    others = [ln for ln in lines if ln not in (msp, chance)]
    assert len(others) == 4
    assert msp.get_zorder() > max(ln.get_zorder() for ln in others) > chance.get_zorder()
    assert msp.get_color() != chance.get_color() and msp.get_linewidth() > chance.get_linewidth()


def test_detector_curve_legend_covers_no_curve():
    h = pd.DataFrame({"epoch": range(1, 21), "val_auroc": np.linspace(0.7, 0.9, 20),
                      "train_loss": np.linspace(0.7, 0.2, 20)})
    fig = plots.detector_curve(h, 12)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())  # outside the plotting area, below it
