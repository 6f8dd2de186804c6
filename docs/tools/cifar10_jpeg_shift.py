"""What the JPEG copy of CIFAR-10 does to the pretrained ResNet20 (docs/data-and-weights.md).

    python docs/tools/cifar10_jpeg_shift.py [--shared ../shared] [--bootstrap 2000] [--json out.json]

Evaluates the akamaster ResNet20 (``resnet20-12fca82f.th``, ImageNet mean / std, as profile
``cifar10-pretrained``) on

- the 1,000 lossless test images of ``cifar10-lossless-sample.npz`` (official test indices 0..999);
- the same 1,000 images as the JPEG copy ``cifar10-jpeg.tar.gz`` holds them (decoded as the project
  decodes it, :func:`helpers.datasets._cifar_from_imagefolder`);
- the same 1,000 lossless images re-encoded by Pillow (libjpeg-turbo) at quality 75, 4:2:0: what a
  user who JPEG-encodes the lossless data with Pillow gets (near the copy, not identical);
- the whole JPEG test split (10,000) and the profile's 5,000-image test split (seed 0: the committed
  run's test split).

Accuracy with a 95 % Wilson interval; the paired difference lossless - JPEG on the same 1,000 images
and the max-softmax-probability (MSP) AUROC for misprediction detection (score 1 - MSP, positive class
"wrong", ``sklearn.metrics.roc_auc_score``) with 95 % percentile bootstrap intervals (images resampled
with replacement; for differences the same resample on both sides).  A few minutes on one CPU thread.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from helpers.datasets import _cifar_from_imagefolder  # noqa: E402
from helpers.models import ResNet20, load_resnet20_checkpoint  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the checkpoint's normalisation


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Softmax probabilities for uint8 images (N, 32, 32, 3)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float().div(255.0)
        out.append(torch.softmax(model((x - mean) / std), 1).numpy())
    return np.concatenate(out)


def pil_q75(images: np.ndarray) -> np.ndarray:
    """Each image JPEG-encoded by Pillow at quality 75 (4:2:0) and decoded again."""
    out = np.empty_like(images)
    for i, a in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=75)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def msp_auroc(prob: np.ndarray, labels: np.ndarray, idx: np.ndarray | None = None) -> float:
    """AUROC of 1 - max softmax probability for detecting the wrong predictions."""
    if idx is not None:
        prob, labels = prob[idx], labels[idx]
    wrong = prob.argmax(1) != labels
    return float(roc_auc_score(wrong, 1.0 - prob.max(1))) if 0 < wrong.sum() < len(wrong) else float("nan")


def bootstrap(stat, n: int, reps: int, seed: int = 0) -> np.ndarray:
    """``stat(idx)`` over ``reps`` resamples of ``range(n)`` with replacement."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(reps)])


def ci(values: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                    help="folder with data/cifar10-jpeg.tar.gz, data/cifar10-lossless-sample.npz and "
                         "weights/resnet20-12fca82f.th (default: ../shared)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    model = load_resnet20_checkpoint(ResNet20(10), args.shared / "weights" / "resnet20-12fca82f.th").eval()
    with np.load(args.shared / "data" / "cifar10-lossless-sample.npz") as z:
        x_lossless, y_sample = z["x_test"], z["y_test"].astype(np.int64)
    _, (x_jpeg, y_jpeg, i_jpeg) = _cifar_from_imagefolder(args.shared / "data" / "cifar10-jpeg.tar.gz")
    assert (i_jpeg == np.arange(10000)).all() and (y_jpeg[:1000] == y_sample).all()
    n = len(y_sample)
    perm = np.random.default_rng(0).permutation(len(y_jpeg))  # the profile's val / test split (seed 0)
    test5k = np.sort(perm[5000:])

    probs = {"lossless_1000": predict(model, x_lossless),
             "jpeg_copy_1000": predict(model, x_jpeg[:n]),
             "pillow_q75_1000": predict(model, pil_q75(x_lossless))}
    p_all = predict(model, x_jpeg)
    res = {"accuracy": {}, "msp_auroc": {}, "paired_difference": {}}

    def acc_row(prob, labels):
        k = int((prob.argmax(1) == labels).sum())
        return {"n": len(labels), "correct": k, "accuracy": k / len(labels), "wilson95": list(wilson(k, len(labels)))}

    for name, prob in probs.items():
        res["accuracy"][name] = acc_row(prob, y_sample)
    res["accuracy"]["jpeg_copy_10000"] = acc_row(p_all, y_jpeg)
    res["accuracy"]["jpeg_copy_profile_test_5000"] = acc_row(p_all[test5k], y_jpeg[test5k])

    reps = args.bootstrap
    for name, prob in probs.items():
        res["msp_auroc"][name] = {"auroc": msp_auroc(prob, y_sample),
                                  "bootstrap95": ci(bootstrap(lambda i, p=prob: msp_auroc(p, y_sample, i), n, reps))}
    for name, prob, labels in (("jpeg_copy_10000", p_all, y_jpeg),
                               ("jpeg_copy_profile_test_5000", p_all[test5k], y_jpeg[test5k])):
        res["msp_auroc"][name] = {
            "auroc": msp_auroc(prob, labels),
            "bootstrap95": ci(bootstrap(lambda i, p=prob, y=labels: msp_auroc(p, y, i), len(labels), reps))}

    a, b = probs["lossless_1000"], probs["jpeg_copy_1000"]
    ca, cb = a.argmax(1) == y_sample, b.argmax(1) == y_sample
    res["paired_difference"] = {
        "accuracy_lossless_minus_jpeg": float(ca.mean() - cb.mean()),
        "accuracy_bootstrap95": ci(bootstrap(lambda i: ca[i].mean() - cb[i].mean(), n, reps)),
        "right_only_lossless": int((ca & ~cb).sum()), "right_only_jpeg": int((~ca & cb).sum()),
        "prediction_changed": int((a.argmax(1) != b.argmax(1)).sum()),
        "auroc_lossless_minus_jpeg": msp_auroc(a, y_sample) - msp_auroc(b, y_sample),
        "auroc_bootstrap95": ci(bootstrap(lambda i: msp_auroc(a, y_sample, i) - msp_auroc(b, y_sample, i), n, reps)),
    }
    res["settings"] = {"bootstrap": reps, "interval_accuracy": "Wilson score, 95 %",
                       "interval_auroc_and_differences": "percentile bootstrap over images, 95 %, seed 0",
                       "torch": torch.__version__}

    for name, r in res["accuracy"].items():
        lo, hi = r["wilson95"]
        print(f"accuracy {name:28s} {100 * r['accuracy']:6.2f} %  [{100 * lo:.2f}, {100 * hi:.2f}]  (n={r['n']})")
    for name, r in res["msp_auroc"].items():
        lo, hi = r["bootstrap95"]
        print(f"MSP AUROC {name:27s} {r['auroc']:.4f}  [{lo:.4f}, {hi:.4f}]")
    print("paired (same 1,000 images):", json.dumps(res["paired_difference"]))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
