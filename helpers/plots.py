"""Figures shared by the notebooks: one style, set once (fastai-style utils)."""
from __future__ import annotations


import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .datasets import denormalize

PALETTE = {"correct": "#4C72B0", "wrong": "#C44E52"}


def set_style() -> None:
    """Seaborn's paper style with readable sizes; deterministic output (no timestamps)."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titleweight": "bold",
                         "svg.hashsalt": "companion", "pdf.fonttype": 42})


def sample_grid(data, split: str = "train", per_class: int = 6, seed: int = 0):
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
    fig.tight_layout()
    return fig


def training_curves(history: pd.DataFrame):
    """Loss and accuracy by epoch; with transfer learning (a ``phase`` column) the head epochs on
    frozen features come first, then the fine-tuning epochs, on one axis split by a dotted line."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    if len(history):
        h = history.reset_index(drop=True)
        x = np.arange(1, len(h) + 1)
        phases = h["phase"] if "phase" in h else pd.Series(["train"] * len(h))
        head = (phases == "head").to_numpy()
        for mask, tag in ((head, "head on frozen features: "), (~head, "")):
            if not mask.any():
                continue
            a.plot(x[mask], h["loss"][mask], marker="o", label=tag.rstrip(": ") or "training")
            train_col = "train_acc" if tag else "train_acc_running"
            if train_col in h:
                b.plot(x[mask], h[train_col][mask], marker="o",
                       label=tag + ("train" if tag else "train (running, augmented)"))
            b.plot(x[mask], h["val_acc"][mask], marker="o", label=tag + "validation")
        if head.any() and (~head).any():
            for ax in (a, b):
                ax.axvline(head.sum() + 0.5, ls=":", c="grey")
            a.legend(["head", "fine-tuning"], fontsize=8)
        b.legend(fontsize=8)
    else:
        for ax in (a, b):
            ax.text(0.5, 0.5, "no training: loaded checkpoint", ha="center", va="center", transform=ax.transAxes)
    a.set(xlabel="epoch", ylabel="cross-entropy", title="Training loss")
    b.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    fig.tight_layout()
    return fig


def roc_figure(curves: dict, title: str = "ROC on validation", markers: dict | None = None):
    """ROC curves of several error scores: ``curves[name] = (y_wrong, score)``; ``markers[name] = threshold``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, (y, s) in curves.items():
        fpr, tpr, thr = roc_curve(y, s)
        line, = ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(y, s):.3f})")
        if markers and name in markers:
            t = markers[name]
            flagged = np.asarray(s) >= t
            y = np.asarray(y).astype(bool)
            ax.plot([flagged[~y].mean()], [flagged[y].mean()], "o", color=line.get_color(), ms=7, mec="k")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate (correct flagged)", ylabel="true positive rate (wrong flagged)",
           title=title)
    ax.legend(fontsize=8, loc="lower right", title="AUROC")
    fig.tight_layout()
    return fig


def score_distributions(df: pd.DataFrame, score: str, title: str, bins: int = 30):
    """Histogram of a score for correct vs wrong predictions (column ``correct``)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    d = df.assign(prediction=np.where(df["correct"], "correct", "wrong"))
    sns.histplot(d, x=score, hue="prediction", stat="density", common_norm=False, bins=bins, ax=ax,
                 palette=PALETTE, element="step")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def note_figure(text: str, size=(6, 2.2)):
    """A figure holding only a note, for a degenerate case (nothing to plot) instead of a crash."""
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def conductance_profiles(examples: dict, fm_high: list[int], title: str):
    """Figures 1-2 analogue: per example (name -> (conductance vector, caption)), the conductance of
    the FM_high feature maps (bars, left) and of every feature map (right).  No example (the model never
    predicts the class outside training): a figure that says so."""
    if not examples:
        return note_figure(f"{title}\n\nno validation or test prediction of this class to show:\n"
                           "the model never predicts it (an under-trained model?)")
    fig, axes = plt.subplots(len(examples), 2, figsize=(11, 2.6 * len(examples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3]})
    for i, (name, (vec, caption)) in enumerate(examples.items()):
        color = PALETTE["wrong" if "wrong" in name else "correct"]
        a, b = axes[i]
        a.bar([str(k) for k in fm_high], vec[fm_high], color=color)
        a.set(title=f"{name}: FM_high", xlabel="feature map", ylabel="conductance")
        b.bar(np.arange(len(vec)), vec, color=color, width=0.9)
        for k in fm_high:
            b.axvline(k, color="k", lw=0.6, ls=":")
        b.set(title=caption, xlabel="feature map", ylabel="conductance")
        b.title.set_fontsize(9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def detector_curve(history: pd.DataFrame, best_epoch: int, title: str = "Conductance detector"):
    """Validation AUROC (and training loss) by epoch; the chosen epoch marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(history["epoch"], history["val_auroc"], marker="o", label="validation AUROC")
    ax.axvline(best_epoch, color="k", ls=":", label=f"chosen epoch {best_epoch}")
    ax.set(xlabel="epoch", ylabel="AUROC", title=title)
    ax2 = ax.twinx()
    ax2.plot(history["epoch"], history["train_loss"], color="grey", alpha=0.6, label="train loss")
    ax2.set_ylabel("train loss (BCE)")
    ax2.grid(False)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def auroc_by_n(ns, aurocs, title: str = "Validation AUROC of LCR by number of mutants"):
    """Figure 4 analogue."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(ns, aurocs, marker=".")
    ax.set(xlabel="number of mutants", ylabel="AUROC", title=title)
    fig.tight_layout()
    return fig


def relay_figure(curves: dict, points: dict | None = None, title: str = "Expert relay on test"):
    """System accuracy against the fraction of inputs discarded to an always-right expert.

    ``curves[name] = (discarded_fraction, accuracy)``; ``points[label] = (discarded, accuracy)``."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (d, a) in curves.items():
        ax.plot(d, a, label=name)
    for label, (d, a) in (points or {}).items():
        ax.plot([d], [a], "o", mec="k")
        ax.annotate(label, (d, a), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set(xlabel="fraction of inputs discarded to the expert", ylabel="system accuracy", title=title, xlim=(0, 1))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def confusion_counts(table: pd.DataFrame, title: str):
    """Figure 6 analogue: correct/wrong prediction x kept/discarded counts as an annotated heatmap."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    sns.heatmap(table, annot=True, fmt="d", cbar=False, cmap="Blues", ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- paper 2: CFE filters
def cfe_training_curves(history: pd.DataFrame):
    """The generators' loss terms, mask size and hit rate per epoch (means over batches and classes)."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(12, 3.2))
    for col, label in (("ce", "cross-entropy (target c)"), ("sparsity", "sparsity: lambda s sum|m|"),
                       ("logits", "logits: -s sum z_c"), ("total", "total")):
        a.plot(history["epoch"], history[col], marker="o", ms=3, label=label)
    a.set(xlabel="epoch", ylabel="loss per batch", title="Generator loss terms")
    a.legend(fontsize=8)
    b.plot(history["epoch"], history["active"], marker="o", ms=3)
    b.set(xlabel="epoch", ylabel="filters", title="Active filters per mask")
    c.plot(history["epoch"], history["hits"], marker="o", ms=3)
    c.set(xlabel="epoch", ylabel="fraction", title="Masked model predicts c", ylim=(0, 1.02))
    fig.tight_layout()
    return fig


def mask_size_histogram(table: pd.DataFrame, n_filters: int, title: str):
    """Histogram of |MC(x)| (active filters of the predicted class's mask), correct vs wrong."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    d = table.assign(prediction_is=np.where(table.correct, "correct", "wrong"))
    sns.histplot(d, x="n_mc", hue="prediction_is", stat="density", common_norm=False, discrete=True,
                 palette=PALETTE, ax=ax, element="step")
    ax.set(xlabel=f"MC filters of the predicted class (of {n_filters})", title=title)
    fig.tight_layout()
    return fig


def mc_overlays(examples: list[dict]):
    """Each example: its image, and the summed activation maps of its MC filters (upsampled to the
    image) over it.  ``examples``: dicts with image (H, W, C in [0, 1]), maps (h, w), title."""
    import torch
    import torch.nn.functional as F

    fig, axes = plt.subplots(len(examples), 2, figsize=(5.2, 2.6 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        img = ex["image"]
        gray = img.shape[-1] == 1
        row[0].imshow(img[..., 0] if gray else img, cmap="gray" if gray else None)
        row[0].set_title(ex["title"], fontsize=9)
        heat = F.interpolate(torch.as_tensor(ex["maps"], dtype=torch.float32)[None, None], size=img.shape[:2],
                             mode="bilinear", align_corners=False)[0, 0].numpy()
        row[1].imshow(img[..., 0] if gray else img, cmap="gray" if gray else None)
        row[1].imshow(heat, cmap="jet", alpha=0.5)
        row[1].set_title(ex.get("overlay_title", "MC filters' activations"), fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig


def filter_heatmap(counts: np.ndarray, selected: np.ndarray, class_names, frequency: float):
    """Class x filter heatmap of the global MC filter counts (each row divided by its maximum), with
    the selected filters (count > f x max) outlined by the colour scale's cut."""
    norm = counts / np.maximum(counts.max(1, keepdims=True), 1)
    order = np.argsort(-selected.sum(0), kind="stable")  # filters used by many classes first
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.12 * counts.shape[1]), 0.9 + 0.25 * counts.shape[0]))
    sns.heatmap(np.where(selected, norm, np.nan)[:, order], ax=ax, cmap="viridis", vmin=0, vmax=1,
                cbar_kws={"label": "count / class max"}, yticklabels=[str(c) for c in class_names],
                xticklabels=False)
    ax.set(xlabel=f"filter (sorted by how many classes select it; blank: count <= {frequency:g} x max)",
           ylabel="class", title="Global MC filters per class")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- paper 2: debugging
def debugging_curves(histories: dict):
    """Per epoch, for each run (e.g. debugged vs control): cross-entropy, the MC and non-MC filter
    sums of the loss (per batch), and validation accuracy."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for label, h in histories.items():
        for ax, col in zip(axes, ("ce", "mc", "non_mc", "val_acc")):
            ax.plot(h["epoch"], h[col], marker="o", ms=3, label=label)
    for ax, title in zip(axes, ("Cross-entropy", "sum f * M[y] (MC filters)", "sum f * (1 - M[y]) (others)",
                                "Validation accuracy")):
        ax.set(xlabel="epoch", title=title)
    axes[-1].legend()
    fig.tight_layout()
    return fig


def gradcam_pairs(examples: list[dict]):
    """Each example: the image, and the Grad-CAM of the original and of the debugged model over it.
    ``examples``: dicts with image (H, W, C in [0, 1]), cams (two (h, w) maps), titles (three)."""
    import torch
    import torch.nn.functional as F

    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.6 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        img = ex["image"]
        gray = img.shape[-1] == 1
        show = img[..., 0] if gray else img
        row[0].imshow(show, cmap="gray" if gray else None)
        for ax, cam in zip(row[1:], ex["cams"]):
            heat = F.interpolate(torch.as_tensor(cam, dtype=torch.float32)[None, None], size=img.shape[:2],
                                 mode="bilinear", align_corners=False)[0, 0].numpy()
            ax.imshow(show, cmap="gray" if gray else None)
            ax.imshow(heat, cmap="jet", alpha=0.5)
        for ax, title in zip(row, ex["titles"]):
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
