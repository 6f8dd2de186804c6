"""Figures shared by the notebooks: one style, set once (fastai-style utils).

Every figure is meant to be read without the code: score keys become display names through one
mapping (:data:`DISPLAY_NAMES`, :func:`display_name`), every heat map has a colour bar, marks on a
plot are named in its legend, long titles are wrapped to their panel, and composite figures carry
a one-line caption at the bottom saying what to look at (``caption=`` overrides it; ``""`` drops it).
"""
from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import Patch

from helpers.datasets import denormalize
from helpers.names import display_name

PALETTE = {"correct": "#4C72B0", "wrong": "#C44E52"}
#: MSP's curve in ROC figures: the baseline, drawn black, dashed and above the detectors' curves
BASELINE_STYLE = {"color": "k", "ls": "--", "lw": 1.8, "zorder": 5}
#: the chance diagonal: thin, light and dotted, below every curve, unlike any detector's line
CHANCE_STYLE = {"ls": (0, (1, 3)), "c": "0.72", "lw": 1.0, "zorder": 1}


CAPTION_SIZE = 9
EQUAL_RECALL_LABEL = "equal-recall operating point: correct and wrong\nrecall equal (threshold chosen on validation)"


def set_style() -> None:
    """Seaborn's paper style with readable sizes; deterministic output (no timestamps)."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "svg.hashsalt": "companion", "pdf.fonttype": 42})


# --------------------------------------------------------------------------- layout helpers
def _text_width_pt(text: str, size: float, weight: str = "normal") -> float:
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    if not text:
        return 0.0
    try:
        return TextPath((0, 0), text, size=size, prop=FontProperties(weight=weight)).get_extents().width
    except ValueError:  # text that mathtext cannot parse: an estimate
        return 0.62 * size * len(text)


def _words(para: str) -> list[str]:
    """Split at spaces, never inside mathtext ($...$)."""
    words, cur, in_math = [], "", False
    for ch in para:
        if ch == "$":
            in_math = not in_math
        if ch == " " and not in_math:
            if cur:
                words.append(cur)
            cur = ""
        else:
            cur += ch
    words = words + [cur] if cur else words
    merged = []  # a short parenthesised group, "(p 1.00)", stays on one line
    for w in words:
        if merged and merged[-1].startswith("(") and ")" not in merged[-1] and len(merged[-1]) + len(w) < 14:
            merged[-1] += " " + w
        else:
            merged.append(w)
    return merged


def _wrap(text: str, width_pt: float, size: float, weight: str = "normal") -> str:
    """Greedy wrap of ``text`` into lines at most ``width_pt`` wide, measured in the font.  Breaks at
    spaces; a word wider than a line (a long class name such as 091.American_Three_toed_Woodpecker)
    is broken after '_' or '/', else anywhere."""
    def fits(t):
        return _text_width_pt(t, size, weight) <= width_pt

    out = []
    for para in str(text).split("\n"):
        line = ""
        for word in _words(para):
            cand = f"{line} {word}" if line else word
            if fits(cand):
                line = cand
                continue
            if line:
                out.append(line)
            line = ""
            if fits(word) or "$" in word:
                line = word
                continue
            for piece in [p for p in re.split(r"(?<=[_/])", word) if p]:
                if fits(line + piece):
                    line += piece
                    continue
                if line:
                    out.append(line)
                line = piece
                while not fits(line) and len(line) > 1:  # no break point: split inside
                    cut = len(line) - 1
                    while cut > 1 and not fits(line[:cut]):
                        cut -= 1
                    out.append(line[:cut])
                    line = line[cut:]
        out.append(line)
    return "\n".join(out)


def _title(ax, text: str, fontsize: float | None = None, **kw):
    """Set a title that :func:`_finish` wraps to the panel's width."""
    size = fontsize or plt.rcParams["axes.titlesize"]
    t = ax.set_title(text, fontsize=size, **kw)
    ax._companion_title = (str(text), t.get_fontsize())
    return t


def _wrap_titles(fig) -> None:
    w_in = fig.get_size_inches()[0]
    for ax in fig.axes:
        raw = getattr(ax, "_companion_title", None)
        if raw is None:
            continue
        text, size = raw
        width = ax.get_position(original=True).width * w_in * 72 * 0.98
        weight = plt.rcParams["axes.titleweight"]
        ax.title.set_text(_wrap(text, width, size, "bold" if weight in ("bold", 700) else "normal"))
    st = fig._suptitle
    if st is not None and st.get_text():
        raw = getattr(fig, "_companion_suptitle", None) or st.get_text()
        fig._companion_suptitle = raw
        st.set_text(_wrap(raw, w_in * 72 * 0.95, st.get_fontsize()))


def _finish(fig, caption: str | None = None):
    """Lay the figure out: titles wrapped to their panels, and ``caption`` (one short line, wrapped
    to the figure's width) under everything, in space added to the figure's height."""
    rect_bottom = 0.0
    if caption:
        w, h = fig.get_size_inches()
        text = _wrap(caption, w * 72 * 0.96, CAPTION_SIZE, "normal")
        n = text.count("\n") + 1
        extra = (n * CAPTION_SIZE * 1.3 + 10) / 72  # inches
        fig.set_size_inches(w, h + extra)
        rect_bottom = extra / (h + extra)
        fig.text(0.5, 0.006, text, ha="center", va="bottom", fontsize=CAPTION_SIZE, style="italic",
                 color="0.2")
    rect = (0, rect_bottom, 1, 1)
    fig.tight_layout(rect=rect)
    _wrap_titles(fig)
    fig.tight_layout(rect=rect)
    return fig


def _caption(caption, default):
    return default if caption is None else caption


# --------------------------------------------------------------------------- data and model
def sample_grid(data, split: str = "train", per_class: int = 6, seed: int = 0, caption: str | None = None):
    """A grid of sample images, one row per class (at most 10 classes)."""
    sd = data[split]
    classes = data.classes[:10]
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.9))
    ds = sd.dataset
    for ci, name in enumerate(classes):
        pos = np.flatnonzero(sd.labels == ci)
        pick = rng.choice(pos, size=min(per_class, len(pos)), replace=False) if len(pos) else []
        for j in range(per_class):
            ax = axes[ci, j]
            ax.axis("off")
            if j < len(pick):
                x = denormalize(ds, ds[int(pick[j])][0])
                ax.imshow(x[..., 0] if x.shape[-1] == 1 else x, cmap="gray" if x.shape[-1] == 1 else None)
        axes[ci, 0].set_title(str(name), fontsize=8, loc="left", x=-0.1, y=0.2, rotation=0, ha="right")
    fig.suptitle(f"{split} samples", y=1.0)
    n = len(data.classes)
    default = (f"{per_class} random {split} images per class; the first {len(classes)} of {n} classes."
               if n > len(classes) else None)
    fig.tight_layout()
    cap = _caption(caption, default)
    if cap:
        w, h = fig.get_size_inches()
        fig.text(0.5, -0.005, _wrap(cap, w * 72 * 1.3, CAPTION_SIZE), ha="center", va="top",
                 fontsize=CAPTION_SIZE, style="italic", color="0.2")
    return fig


def training_curves(history: pd.DataFrame, caption: str | None = None):
    """Loss and accuracy by epoch; with transfer learning (a ``phase`` column) the head epochs on
    frozen features come first, then the fine-tuning epochs, on one axis split by a dotted line
    (one colour per quantity across both phases)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    default = None
    if len(history):
        h = history.reset_index(drop=True)
        x = np.arange(1, len(h) + 1)
        phases = h["phase"] if "phase" in h else pd.Series(["train"] * len(h))
        head = (phases == "head").to_numpy()
        two = head.any() and (~head).any()
        seen = set()

        def once(label):
            out = label if label not in seen else None
            seen.add(label)
            return out

        for mask, is_head in ((head, True), (~head, False)):
            if not mask.any():
                continue
            a.plot(x[mask], h["loss"][mask], marker="o", color="C0", label=once("training"))
            train_col = "train_acc" if is_head else "train_acc_running"
            if train_col in h:
                b.plot(x[mask], h[train_col][mask], marker="o" if is_head else "s", color="C0",
                       label=once("train" if is_head else "train (running mean, augmented)"))
            b.plot(x[mask], h["val_acc"][mask], marker="o", color="C1", label=once("validation"))
        if two:
            for ax in (a, b):
                ax.axvline(head.sum() + 0.5, ls=":", c="grey", label="end of the head-only epochs")
            a.legend(fontsize=8, loc="best")
            default = ("Left of the dotted line: only the new head is trained, on frozen pretrained features; "
                       "right of it: fine-tuning of the profile's trainable layers.")
        b.legend(fontsize=8, loc="best")
        a.set(xlabel="epoch", ylabel="cross-entropy", title="Training loss")
        b.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    else:
        for ax, title in ((a, "Training loss"), (b, "Accuracy")):
            ax.set(xticks=[], yticks=[], title=title)
            ax.grid(False)
            ax.text(0.5, 0.5, "no training here:\nthe model is a loaded checkpoint", ha="center", va="center",
                    transform=ax.transAxes)
    return _finish(fig, _caption(caption, default))


# --------------------------------------------------------------------------- detectors
def roc_figure(curves: dict, title: str = "ROC on validation", markers: dict | None = None,
               marker_label: str = EQUAL_RECALL_LABEL, caption: str | None = None):
    """ROC curves of several error scores: ``curves[name] = (y_wrong, score)``; ``markers[name] = threshold``
    (drawn as a dot on the curve, named in the legend by ``marker_label``: the equal-recall threshold
    chosen on validation for every caller of this companion).  Names go through :func:`display_name`."""
    from matplotlib.lines import Line2D
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(8.4, 4.5))
    for name, (y, s) in curves.items():
        fpr, tpr, thr = roc_curve(y, s)
        # the confidence baseline every detector must beat: black, dashed and on top, so it never hides
        style = BASELINE_STYLE if name == "msp" else {"zorder": 2}
        line, = ax.plot(fpr, tpr, label=f"{display_name(name)} ({roc_auc_score(y, s):.3f})", **style)
        if markers and name in markers:
            t = markers[name]
            flagged = np.asarray(s) >= t
            y = np.asarray(y).astype(bool)
            ax.plot([flagged[~y].mean()], [flagged[y].mean()], "o", color=line.get_color(), ms=7, mec="k",
                    zorder=6)
    ax.plot([0, 1], [0, 1], **CHANCE_STYLE)
    ax.set(xlabel="false positive rate (correct predictions flagged)",
           ylabel="true positive rate\n(wrong predictions flagged)", title=title, aspect="equal")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], **CHANCE_STYLE))
    labels.append("chance (AUROC 0.5)")
    if markers and any(n in markers for n in curves):
        handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc="0.85", mec="k"))
        labels.append(marker_label)
    ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.03, 0.5),
              title="detector (AUROC)", title_fontsize=9, frameon=False)
    default = ("An error score flags a prediction as wrong above a threshold; each curve sweeps the threshold. "
               "Higher and further left is better.")
    return _finish(fig, _caption(caption, default))


def score_distributions(df: pd.DataFrame, score: str, title: str, bins: int = 30, caption: str | None = None):
    """Histogram of a score for correct vs wrong predictions (column ``correct``)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    d = df.assign(prediction=np.where(df["correct"], "correct", "wrong"))
    sns.histplot(d, x=score, hue="prediction", hue_order=["correct", "wrong"], stat="density",
                 common_norm=False, bins=bins, ax=ax, palette=PALETTE, element="step")
    ax.set_xlabel(display_name(score))
    ax.set_ylabel("density (area 1 per group)")
    ax.set_title(title)
    return _finish(fig, caption)


def note_figure(text: str, size=(6, 2.2)):
    """A figure holding only a note, for a degenerate case (nothing to plot) instead of a crash."""
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def conductance_profiles(examples: dict, fm_high: list[int], title: str, caption: str | None = None):
    """Figures 1-2 analogue: per example (name -> (conductance vector, caption)), the conductance of
    the FM_high feature maps (bars, left) and of every feature map (right, FM_high marked by dotted
    lines and triangles).  No example (the model never predicts the class outside training): a figure
    that says so."""
    import matplotlib.transforms as mtransforms

    if not examples:
        return note_figure(f"{title}\n\nno validation or test prediction of this class to show:\n"
                           "the model never predicts it (an under-trained model?)")
    fig, axes = plt.subplots(len(examples), 2, figsize=(12, 2.8 * len(examples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.25, 3]})
    for i, (name, (vec, cap)) in enumerate(examples.items()):
        vec = np.asarray(vec, dtype=float)
        color = PALETTE["wrong" if "wrong" in name else "correct"]
        a, b = axes[i]
        a.bar([str(k) for k in fm_high], vec[fm_high], color=color)
        _title(a, name, fontsize=9)
        a.set(xlabel="FM_high feature map (rank order)", ylabel="conductance")
        x = np.arange(len(vec))
        if len(vec) > 128:  # bars narrower than a pixel fade out: lines keep every map visible
            b.vlines(x, 0, vec, color=color, lw=0.8)
            b.axhline(0, color="0.3", lw=0.5)
            b.set_xlim(-0.01 * len(vec), 1.01 * len(vec))
        else:
            b.bar(x, vec, color=color, width=0.9)
        for k in fm_high:
            b.axvline(k, color="k", lw=0.7, ls=":", zorder=0)
        b.plot(fm_high, [1.0] * len(fm_high), "v", color="k", ms=5, clip_on=False,
               transform=mtransforms.blended_transform_factory(b.transData, b.transAxes))
        _title(b, cap, fontsize=9, pad=9)
        b.set(xlabel="feature map (all of the layer; dotted with \u25bc: FM_high)", ylabel="conductance")
    fig.suptitle(title)
    default = (f"FM_high: the {len(fm_high)} feature maps with the highest mean conductance over the class's correct "
               "training predictions. Does the wrong prediction rely on them less than the correct one?")
    return _finish(fig, _caption(caption, default))


def detector_curve(history: pd.DataFrame, best_epoch: int, title: str = "Conductance detector",
                   caption: str | None = None):
    """Validation AUROC (and training loss) by epoch; the chosen epoch marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(history["epoch"], history["val_auroc"], marker="o", label="validation AUROC (left axis)")
    ax.axvline(best_epoch, color="k", ls=":", label=f"chosen epoch {best_epoch} (best validation AUROC)")
    ax.set(xlabel="epoch", ylabel="validation AUROC", title=title)
    ax2 = ax.twinx()
    ax2.plot(history["epoch"], history["train_loss"], color="grey", alpha=0.6, label="train loss (right axis)")
    ax2.set_ylabel("train loss (BCE)")
    ax2.grid(False)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    # below the axes: inside, it covered the curves (the loss falls where the AUROC rises)
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=1, frameon=False)
    return _finish(fig, caption)


def detector_learning_curve(curve: pd.DataFrame, title: str = "Conductance detector: learning curve",
                            caption: str | None = None):
    """AUROC against the number of photos the detector learned from (log axis): held out (95 %
    interval) and in sample, the paper's single detector as its own point, MSP on the same photos as
    the control (``curve``: rows of :func:`paper1.detector_learning_curve`)."""
    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    cf, paper = curve.iloc[1:], curve.iloc[0]
    err = np.vstack([cf.heldout_auroc - cf.heldout_auroc_ci_low, cf.heldout_auroc_ci_high - cf.heldout_auroc])
    ax.errorbar(cf.n_train, cf.heldout_auroc, yerr=err, marker="o", capsize=3, color=PALETTE["correct"],
                label="cross-fitted: held-out AUROC (95 % interval)")
    ax.plot(cf.n_train, cf.train_auroc, marker="o", ls="--", color="grey", label="cross-fitted: in-sample AUROC")
    ax.errorbar([paper.n_train], [paper.heldout_auroc], marker="s", capsize=3, color=PALETTE["wrong"], ls="none",
                yerr=[[paper.heldout_auroc - paper.heldout_auroc_ci_low],
                      [paper.heldout_auroc_ci_high - paper.heldout_auroc]],
                label="paper's protocol (train split): validation AUROC")
    ax.plot([paper.n_train], [paper.train_auroc], marker="s", mfc="none", color=PALETTE["wrong"], ls="none",
            label="paper's protocol: in-sample AUROC")
    ax.axhline(cf.msp_auroc.iloc[-1], color="k", ls=":", label="MSP on all photos (control)")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, NullLocator

    ticks = sorted({*cf.n_train.round(), round(paper.n_train)})  # the points' own sizes
    ax.set_xticks(ticks, [f"{t:,.0f}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="photos the detector learned from (log scale)", ylabel="AUROC of error detection", title=title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _finish(fig, _caption(caption, "A gap between in-sample and held-out AUROC is memorisation; a held-out "
                                          "curve still rising at the right is a detector short of photos."))


def auroc_by_n(ns, aurocs, title: str = "Validation AUROC of LCR by number of mutants", caption: str | None = None):
    """Figure 4 analogue."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(ns, aurocs, marker=".")
    ax.set(xlabel="number of mutant models", ylabel="validation AUROC", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, caption)


def relay_figure(curves: dict, points: dict | None = None, title: str = "Expert relay on test",
                 points_of: str | None = None, caption: str | None = None):
    """System accuracy against the fraction of inputs discarded to an always-right expert.

    ``curves[name] = (discarded_fraction, accuracy)``; ``points[label] = (discarded, accuracy)``: the
    operating points (thresholds chosen on validation) of the score ``points_of``, each with its own
    marker, in that curve's colour, named in the legend."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9.0, 4.3))
    colors = {}
    for name, (d, a) in curves.items():
        line, = ax.plot(d, a, label=display_name(name))
        colors[name] = line.get_color()
    handles, labels = ax.get_legend_handles_labels()
    color = colors.get(points_of, "0.85")
    if points:
        whose = f" of {display_name(points_of)}" if points_of else ""
        handles.append(Line2D([], [], ls=""))
        labels.append(f"operating points{whose}\n(thresholds chosen on validation):")
    for (label, (d, a)), marker in zip(points.items() if points else [], "osD^vP*X"):
        h, = ax.plot([d], [a], marker, color=color, mec="k", ms=8, ls="", zorder=3, clip_on=False)
        handles.append(h)
        labels.append(display_name(label))
    ax.set(xlabel="fraction of inputs discarded to the expert", ylabel="system accuracy", title=title, xlim=(0, 1))
    ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False,
              title="discarding by", title_fontsize=9)
    default = ("The inputs a score rates most likely wrong go to an always-right expert: "
               "the higher a curve at a given fraction, the better the score.")
    return _finish(fig, _caption(caption, default))


def confusion_counts(table: pd.DataFrame, title: str, caption: str | None = None):
    """Figure 6 analogue: correct/wrong prediction x kept/discarded counts as an annotated heatmap."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    sns.heatmap(table, annot=True, fmt="d", cbar=True, cmap="Blues", ax=ax, vmin=0,
                cbar_kws={"label": "number of test images"})
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    default = "A good detector keeps the correct predictions and discards the wrong ones (the diagonal)."
    return _finish(fig, _caption(caption, default))


# --------------------------------------------------------------------------- paper 2: CFE filters
def cfe_training_curves(history: pd.DataFrame, caption: str | None = None):
    """The generators' loss terms, mask size and hit rate per epoch (means over batches and classes)."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.4))
    for col, label in (("ce", "cross-entropy (target class c)"), ("sparsity", r"sparsity: $\lambda\, s \sum|m|$"),
                       ("logits", r"logits: $-s \sum z_c$"), ("total", "total")):
        a.plot(history["epoch"], history[col], marker="o", ms=3, label=label)
    a.set(xlabel="epoch", ylabel="loss per batch", title="Generator loss terms")
    a.legend(fontsize=8)
    b.plot(history["epoch"], history["active"], marker="o", ms=3)
    b.set(xlabel="epoch", ylabel="filters", title="Active filters per mask")
    c.plot(history["epoch"], history["hits"], marker="o", ms=3)
    c.set(xlabel="epoch", ylabel="fraction of (image, class) pairs", title="Masked model predicts class c",
          ylim=(0, 1.02))
    default = ("Means over batches and the per-class generators: masks should shrink (middle) while the masked "
               "model still predicts the target class (right, near 1).")
    return _finish(fig, _caption(caption, default))


def mask_size_histogram(table: pd.DataFrame, n_filters: int, title: str, caption: str | None = None):
    """Histogram of |MC(x)| (active filters of the predicted class's mask), correct vs wrong."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    d = table.assign(prediction=np.where(table.correct, "correct", "wrong"))
    sns.histplot(d, x="n_mc", hue="prediction", hue_order=["correct", "wrong"], stat="density",
                 common_norm=False, discrete=True, palette=PALETTE, ax=ax, element="step")
    ax.set(xlabel=f"MC filters of the predicted class (of {n_filters})", ylabel="density (area 1 per group)",
           title=title)
    return _finish(fig, caption)


def mask_size_vs_agreement(table: pd.DataFrame, n_bins: int = 6, caption: str | None = None):
    """Why 1 - recall ranks errors below chance (docs/methods.md section 8): per bin of mask size |MC| (quantile bins),
    correct vs wrong predictions: left, the mean recall against G_c (it grows with the mask);
    right, the mean number of MC filters inside and outside G_c (``table``: an analysis split with
    n_mc, recall, precision, correct)."""
    d = table.assign(prediction=np.where(table.correct, "correct", "wrong"),
                     inside=table.n_mc * table.precision, outside=table.n_mc * (1 - table.precision))
    edges = np.unique(np.quantile(d.n_mc, np.linspace(0, 1, n_bins + 1)))
    d["size_bin"] = pd.cut(d.n_mc, edges, include_lowest=True, duplicates="drop")
    centres = d.groupby("size_bin", observed=True).n_mc.mean()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for kind, part in d.groupby("prediction"):
        m = part.groupby("size_bin", observed=True).recall.mean()
        a1.plot(centres.loc[m.index], m.values, "o-", color=PALETTE[kind], label=f"{kind} ({len(part)})")
    a1.set(xlabel="MC filters of the predicted class (bin mean)", ylabel="mean recall against G_c",
           title="Recall against G_c by mask size")
    a1.legend(title="prediction", fontsize=8)
    means = d.groupby("prediction")[["inside", "outside"]].mean()
    x = np.arange(len(means))
    a2.bar(x, means.inside, color=[PALETTE[k] for k in means.index], label="inside G_c")
    a2.bar(x, means.outside, bottom=means.inside, color=[PALETTE[k] for k in means.index], alpha=0.4,
           hatch="//", label="outside G_c")
    for i, (_, r) in enumerate(means.iterrows()):
        a2.annotate(f"{r.inside:.1f} + {r.outside:.1f}", (i, r.inside + r.outside),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    a2.set_ylim(0, 1.4 * float((means.inside + means.outside).max()))  # room for the labels and the legend
    a2.grid(axis="x", visible=False)  # a vertical grid line would run through the translucent segment
    a2.set(xticks=x, xticklabels=list(means.index), ylabel="mean MC filters per prediction",
           title="MC filters inside and outside G_c")
    a2.legend(handles=[Patch(facecolor="0.45", label="inside G_c"),
                       Patch(facecolor="0.45", alpha=0.4, hatch="//", label="outside G_c (hatched)")],
              fontsize=8, loc="upper center", ncol=2)
    default = ("Look for: recall rising with mask size (it rewards large masks), and wrong predictions with larger "
               "masks whose extra filters lie outside G_c. Where both hold, 1 - recall ranks errors low and "
               "1 - precision / the outside count rank them high.")
    return _finish(fig, default if caption is None else caption)


def _upsample(maps, shape) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.as_tensor(np.asarray(maps), dtype=torch.float32)[None, None], size=shape,
                         mode="bilinear", align_corners=False)[0, 0].numpy()


def _colorbar(fig, mappable, cax, label: str):
    """A colour bar in its own grid cell (tight_layout keeps managing that cell)."""
    cb = fig.colorbar(mappable, cax=cax)
    cax.set_axes_locator(None)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def _image_grid(width_in: float, row_titles: list[list[str]], title_size: float, one_bar: bool = False):
    """A figure of rows of square image panels, one per title, with a narrow colour-bar column at the
    right: one bar per row, or (``one_bar``) one for the whole figure, in the middle row.  Each row is
    its image's height plus its longest title's wrapped lines (long class names, e.g. CUB's species),
    so a wrapped title never runs into the images of the row above.  Returns (fig, panels, bars)."""
    n_rows, n_images = len(row_titles), len(row_titles[0])
    panel_in = width_in * 0.9 / (n_images + 0.06)
    heights = [panel_in + 0.25 + title_size * 1.3 / 72 *
               max(_wrap(t, panel_in * 72 * 0.98, title_size, "bold").count("\n") + 1 for t in titles)
               for titles in row_titles]
    fig = plt.figure(figsize=(width_in, sum(heights)))
    gs = fig.add_gridspec(n_rows, n_images + 1, width_ratios=[1] * n_images + [0.06], height_ratios=heights)
    panels = [[fig.add_subplot(gs[r, c]) for c in range(n_images)] for r in range(n_rows)]
    if one_bar:
        return fig, panels, fig.add_subplot(gs[n_rows // 2, n_images])
    return fig, panels, [fig.add_subplot(gs[r, n_images]) for r in range(n_rows)]


def mc_overlays(examples: list[dict], caption: str | None = None):
    """Each example: its image, and the summed activation maps of its MC filters (upsampled to the
    image) over it.  ``examples``: dicts with image (H, W, C in [0, 1]), maps (h, w), title."""
    titles = [[ex["title"], ex.get("overlay_title", "MC filters' activations")] for ex in examples]
    fig, rows, cbars = _image_grid(6.0, titles, 9)
    for row, cax, ex, (title, overlay_title) in zip(rows, cbars, examples, titles):
        img = ex["image"]
        gray = img.shape[-1] == 1
        show = img[..., 0] if gray else img
        row[0].imshow(show, cmap="gray" if gray else None)
        _title(row[0], title, fontsize=9)
        heat = _upsample(ex["maps"], img.shape[:2])
        row[1].imshow(show, cmap="gray" if gray else None)
        im = row[1].imshow(heat, cmap="jet", alpha=0.5, vmin=min(0.0, float(heat.min())),
                           vmax=max(float(heat.max()), 1e-12))
        _title(row[1], overlay_title, fontsize=9)
        for ax in row:
            ax.axis("off")
        _colorbar(fig, im, cax, "summed activation")
    default = ("Left: label -> prediction (softmax prob.). Right: where the predicted class's MC filters fire "
               "(their activation maps summed, upsampled).")
    return _finish(fig, _caption(caption, default))


def filter_heatmap(counts: np.ndarray, selected: np.ndarray, class_names, frequency: float,
                   max_rows: int = 30, caption: str | None = None):
    """Class x filter heatmap of the global MC filter counts (each row divided by its maximum), with
    the selected filters (count > f x max) coloured and the others blank; beside it, the number of
    selected filters per class.  Filters no shown class selects are left out.  With more than
    ``max_rows`` classes (CUB: 100), only the ``max_rows`` classes with the most selected filters are
    shown (in class order), and the caption says so."""
    counts, selected = np.asarray(counts), np.asarray(selected, dtype=bool)
    n_classes, n_filters = counts.shape
    n_sel = selected.sum(1)
    if n_classes > max_rows:
        rows = np.sort(np.argsort(-n_sel, kind="stable")[:max_rows])
    else:
        rows = np.arange(n_classes)
    norm = counts / np.maximum(counts.max(1, keepdims=True), 1)
    order = np.argsort(-selected.sum(0), kind="stable")  # filters used by many classes first
    order = order[selected[rows][:, order].any(0)]
    if not len(order):
        return note_figure(f"Global MC filters per class: no filter passes the frequency threshold f = {frequency:g}")
    names = [str(class_names[i]) for i in rows]
    label_in = max(_text_width_pt(s, 9) for s in names) / 72
    height = 1.6 + 0.24 * len(rows)
    heat_in = min(max(4.5, 0.03 * len(order)), 14.0 - 3.4 - label_in)
    fig = plt.figure(figsize=(label_in + heat_in + 3.4, height))
    gs = fig.add_gridspec(1, 3, width_ratios=[heat_in, 1.1, 0.15])
    ax, bx, cax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
    sns.heatmap(np.where(selected, norm, np.nan)[rows][:, order], ax=ax, cmap="viridis", vmin=0, vmax=1,
                cbar_ax=cax, cbar_kws={"label": "count / the class's max count"}, yticklabels=names,
                xticklabels=False)
    cax.set_axes_locator(None)
    ax.tick_params(axis="y", labelsize=9, rotation=0)
    ax.grid(False)
    ax.set(xlabel=f"filter, most shared first\n({len(order)} of {n_filters} are in G_c of a class shown)",
           ylabel="class")
    _title(ax, "Global MC filters per class (G_c)")
    bx.barh(np.arange(len(rows)) + 0.5, n_sel[rows], color="0.45", height=0.7)
    bx.set(ylim=(len(rows), 0), yticks=[], xlabel="filters in G_c")
    bx.grid(axis="y", visible=False)
    shown = (f"The {len(rows)} of {n_classes} classes with the most filters in G_c (per class: 0-{n_sel.max()}, "
             f"median {np.median(n_sel):g}; all classes in the table). "
             if len(rows) < n_classes else "")
    default = (f"{shown}Colour: how many of the class's training images have the filter in their CFE mask, over "
               f"the class's top filter; blank: not in G_c (count <= f x max, f = {frequency:g}).")
    return _finish(fig, _caption(caption, default))


# --------------------------------------------------------------------------- paper 2: debugging
def debugging_curves(histories: dict, caption: str | None = None):
    """Per epoch, for each run (e.g. debugged vs control): cross-entropy, the MC and non-MC filter
    sums of the loss (per batch), and validation accuracy."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    for label, h in histories.items():
        for ax, col in zip(axes, ("ce", "mc", "non_mc", "val_acc")):
            ax.plot(h["epoch"], h[col], marker="o", ms=3, label=display_name(label))
    for ax, title, ylabel in zip(axes, ("Cross-entropy", r"$\sum f \cdot M[y]$ (MC filters, rewarded)",
                                        r"$\sum f \cdot (1 - M[y])$ (others, penalised)", "Validation accuracy"),
                                 ("loss per batch", "sum per batch", "sum per batch", "accuracy")):
        ax.set(xlabel="epoch", ylabel=ylabel)
        _title(ax, title)
    axes[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.03, 0.5), frameon=False, title="run",
                    title_fontsize=9)
    default = ("f: the pooled last-conv features after a thresholded sigmoid; M[y]: the true class's MC filters; "
               "control: the same fine-tuning without the filter terms. Debugging should raise the first sum, lower "
               "the second and keep the accuracy.")
    return _finish(fig, _caption(caption, default))


def gradcam_pairs(examples: list[dict], caption: str | None = None):
    """Each example: the image, and the Grad-CAM of the original and of the debugged model over it.
    ``examples``: dicts with image (H, W, C in [0, 1]), cams (two (h, w) maps), titles (three).
    Each map is shown relative to its own maximum (where a model looks, not how strongly), with one
    colour bar for all."""
    fig, rows, cax = _image_grid(8.4, [list(ex["titles"]) for ex in examples], 8, one_bar=True)
    im = None
    for row, ex in zip(rows, examples):
        img = ex["image"]
        gray = img.shape[-1] == 1
        show = img[..., 0] if gray else img
        row[0].imshow(show, cmap="gray" if gray else None)
        for ax, cam in zip(row[1:], ex["cams"]):
            heat = _upsample(cam, img.shape[:2])
            top = float(np.abs(heat).max())
            ax.imshow(show, cmap="gray" if gray else None)
            im = ax.imshow(heat / top if top > 0 else heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for ax, title in zip(row, ex["titles"]):
            _title(ax, title, fontsize=8)
            ax.axis("off")
    if im is not None:
        _colorbar(fig, im, cax, "Grad-CAM / the map's max")
    else:
        cax.axis("off")
    default = ("Left: test image (true class). Middle, right: Grad-CAM for the predicted class (softmax prob.) of "
               "the original and the debugged model. Look for the evidence moving onto the object.")
    return _finish(fig, _caption(caption, default))
