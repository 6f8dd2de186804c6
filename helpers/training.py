"""Training, evaluation and the per-sample prediction table (paper 1, section 4: the models whose
mistakes we detect).  Seeded; AMP and channels_last on CUDA; a tqdm progress bar."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.datasets import ArrayImages, DataBundle
from helpers.models import load_state
from helpers.progress import bar as progress_bar
from helpers.utils import atomic_path, seed_everything


def iterate_batches(dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                    num_workers: int = 0, start: int = 0, stop: int | None = None, pin_memory: bool = False):
    """Yield (x, y) batches; in-memory datasets are sliced as whole tensors (no per-item Python).

    ``start`` / ``stop`` (no shuffle): only the samples in [start, stop); with ``start`` a multiple of
    ``batch_size`` the batches are exactly those of the whole pass (a work unit of helpers.tools.precompute).
    ``num_workers`` (the profile's): processes that decode image files while the model computes;
    ``pin_memory`` (on CUDA, :meth:`Experiment.loader_options`): page-locked batches, so that
    ``.to(device, non_blocking=True)`` overlaps the copy with compute."""
    if start or stop is not None:
        if shuffle:
            raise ValueError("iterate_batches: start / stop need shuffle=False")
        stop = len(dataset) if stop is None else min(stop, len(dataset))
        if not isinstance(dataset, ArrayImages):
            dataset = torch.utils.data.Subset(dataset, range(start, stop))
    if isinstance(dataset, ArrayImages):
        n = len(dataset) if stop is None else stop
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(start, n)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x, y = dataset._convert(dataset.images[idx]), dataset.labels[idx]
            yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                                             num_workers=num_workers, pin_memory=pin_memory,
                                             persistent_workers=False)
        yield from loader


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, pad: int | None = None) -> torch.Tensor:
    """Batched random crop of the zero-padded image and, for ``crop_flip``, horizontal flip; or, for
    ``shift_flip``, :func:`shift_flip`.

    ``pad`` defaults to an eighth of the image side (4 at 32x32, the usual CIFAR setting; 28 at
    224x224).  Zero padding is applied in the normalised space (the dataset mean colour)."""
    if kind == "none":
        return x
    if kind == "shift_flip":
        return shift_flip(x, generator)
    b, c, h, w = x.shape
    pad = max(1, round(h / 8)) if pad is None else pad
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    out = xp.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if kind == "crop_flip":
        flip = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def shift_flip(x: torch.Tensor, generator: torch.Generator, shift: float = 0.1) -> torch.Tensor:
    """Keras' ``ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)``,
    batched: each image moved by a uniform random offset of up to ``shift`` of its width and of its height
    (sub-pixel, bilinear), the pixels that come in repeating the nearest edge (Keras' ``fill_mode='nearest'``),
    then flipped left-right with probability 1/2."""
    b = x.shape[0]
    offsets = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * shift)  # in [-1, 1] grid units: 2 = one side
    flip = torch.rand(b, generator=generator) < 0.5
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)  # x' = -x mirrors the image
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = offsets
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def param_groups(model: nn.Module, tcfg: dict) -> list[dict]:
    """The trainable parameters, with ``training.kernel_l2`` as weight decay on the convolution kernels:
    an L2 penalty c * sum(w^2) in the loss has the gradient 2 c w, which is what weight decay 2 c adds
    (for SGD and for Adam, whose decay is added to the gradient before the moments)."""
    params = [p for p in model.parameters() if p.requires_grad]
    c = float(tcfg.get("kernel_l2") or 0.0)
    if not c:
        return [{"params": params}]
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, nn.Conv2d)}
    return [{"params": [p for p in params if id(p) in kernels], "weight_decay": tcfg["weight_decay"] + 2 * c},
            {"params": [p for p in params if id(p) not in kernels]}]


def _optimizer(model: nn.Module, tcfg, lr=None, fused: bool = False):
    """The profile's optimizer.  ``fused`` (with AMP): torch's fused kernel, which takes the loss scaler's
    inf check as a device tensor, so that ``GradScaler.step`` does not read it on the host every step (the
    unfused step does: ``_maybe_opt_step``'s ``found_inf.item()``)."""
    groups = param_groups(model, tcfg)
    lr = tcfg["lr"] if lr is None else lr
    extra = {"fused": True} if fused else {}
    if tcfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=tcfg["momentum"],
                               weight_decay=tcfg["weight_decay"], nesterov=tcfg["momentum"] > 0, **extra)
    return torch.optim.Adam(groups, lr=lr, weight_decay=tcfg["weight_decay"], **extra)


def module_names(model: nn.Module, spec, key: str, special: str = "'all'") -> list[str]:
    """``spec`` (a module name or a list of them) as a list, every name checked against the model's
    modules before any training: an unknown one raises naming ``key``, the name and valid ones."""
    names = [spec] if isinstance(spec, str) else list(spec)
    known = dict(model.named_modules())
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"{key}: {bad} are not modules of the model; valid: {special} or module names such as "
                         f"{', '.join(n for n in known if n and n.count('.') <= 1)}")
    return names


def set_trainable(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """Freeze everything but the parameters of the named modules (``""``: the whole model); return
    the trainable ones."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for n in names:
        for p in model.get_submodule(n).parameters():
            if not p.requires_grad:
                p.requires_grad_(True)
                params.append(p)
    return params


def freeze_all_but(model: nn.Module, trainable) -> list[str]:
    """``training.trainable``: ``"all"`` or a list of module names (their parameters train, the rest
    are frozen).  Returns the names; an unknown name raises before any training."""
    names = [""] if trainable in (None, "all") else module_names(model, trainable, "training.trainable")
    set_trainable(model, names)
    return names


def train_head(model: nn.Module, g: dict, y: dict, tcfg: dict, seed: int) -> list[dict]:
    """Transfer learning, step 1: train only the final linear layer on the frozen pooled features
    ``g`` (``models.pooled_features`` of the train and val images, computed once), for
    ``training.head_epochs`` epochs of Adam at ``training.head_lr`` (batches of ``batch_size``, the
    profile's weight decay); the weights of the epoch
    with the best validation accuracy (the earliest on a tie) are kept.  Seconds on a CPU, because
    the convolutional part never runs."""
    from helpers.models import pooled_head

    _, linear = pooled_head(model)
    gen = seed_everything(seed)
    opt = torch.optim.Adam(linear.parameters(), lr=tcfg["head_lr"], weight_decay=tcfg["weight_decay"])
    n = len(y["train"])
    best, best_acc, history = None, -1.0, []
    for epoch in range(tcfg["head_epochs"]):
        linear.train()
        order = torch.randperm(n, generator=gen)
        tot = 0.0
        for i in range(0, n, tcfg["batch_size"]):
            idx = order[i:i + tcfg["batch_size"]]
            loss = F.cross_entropy(linear(g["train"][idx]), y["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        with torch.no_grad():
            train_acc = (linear(g["train"]).argmax(1) == y["train"]).float().mean().item()
            val_acc = (linear(g["val"]).argmax(1) == y["val"]).float().mean().item()
        history.append({"epoch": epoch + 1, "phase": "head", "loss": tot / n, "train_acc": train_acc,
                        "val_acc": val_acc})
        if val_acc > best_acc:
            best_acc, best = val_acc, {k: v.detach().clone() for k, v in linear.state_dict().items()}
    if best is not None:
        linear.load_state_dict(best)
    linear.eval()
    return history


def _scheduler(opt, tcfg, steps_per_epoch):
    total = max(1, tcfg["epochs"] * steps_per_epoch)
    kind = tcfg["schedule"]
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(total * 0.5), int(total * 0.75)], gamma=0.1)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg["lr"], total_steps=total, pct_start=0.15)
    return None


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, device, batch_size: int = 512, loader: dict | None = None) -> np.ndarray:
    """Logits of every sample of ``dataset`` in order (model in eval mode).  ``loader``: keyword
    arguments of :func:`iterate_batches` (``num_workers``, ``pin_memory``).  The logits stay on the
    device until the end: one copy to the host instead of one per batch."""
    model.eval()
    out = []
    for x, _ in iterate_batches(dataset, batch_size, **(loader or {})):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float())
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), np.float32)


def _training_state(model, opt, sched, scaler, gen, history) -> dict:
    """Everything that decides the rest of a training run: weights, optimizer, schedule, loss scaler, the
    data order's and dropout's random states, and the history so far."""
    state = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
             "scaler": scaler.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
             "history": history, "epoch": len(history)}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore(state: dict, model, opt, sched, scaler, gen) -> list[dict]:
    load_state(model, state["model"])
    opt.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return list(state["history"])


def train_model(model: nn.Module, data: DataBundle, tcfg: dict, seed: int, device: torch.device,
                progress: bool = True, loader: dict | None = None, state_path: Path | None = None,
                on_epoch_end: Callable[[int], None] | None = None, amp: bool | None = None) -> list[dict]:
    """Train on the train split; returns the per-epoch history (loss, train and val accuracy).
    The running loss and accuracy are summed on the device and read once per epoch (no host sync
    per step).  ``loader``: keyword arguments of :func:`iterate_batches`.

    ``amp``: mixed precision (float16 autocast, a loss scaler and a fused optimizer, whose step takes the
    scaler's inf check on the device: no host sync per step either).  None: ``training.amp`` on CUDA only,
    as ``Experiment.model_params`` records it.  True runs it on any device; on the simulated accelerator
    (:mod:`helpers.simdevice`) that is the test of this path without a GPU.

    ``state_path``: after every epoch the whole training state (:func:`_training_state`) is written there
    atomically, and a run that finds it resumes after its last epoch: on one machine, a run stopped and
    resumed ends with the same weights, bit for bit, as one that ran straight through.  ``on_epoch_end``
    is called with the number of finished epochs after each epoch's state is saved."""
    loader = loader or {}
    gen = seed_everything(seed)
    model.to(device)
    use_amp = bool(tcfg.get("amp")) and device.type == "cuda" if amp is None else bool(amp)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_ds = data["train"].dataset
    steps = math.ceil(len(train_ds) / tcfg["batch_size"])
    freeze_all_but(model, tcfg.get("trainable", "all"))
    opt = _optimizer(model, tcfg, fused=use_amp)
    sched = _scheduler(opt, tcfg, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    history = []
    if state_path is not None and Path(state_path).is_file():
        history = _restore(torch.load(state_path, map_location=device, weights_only=True), model, opt, sched,
                           scaler, gen)
    bar = progress_bar(range(len(history), tcfg["epochs"]), desc="train (epochs)", enabled=progress,
                       initial=len(history), total=tcfg["epochs"])
    for epoch in bar:
        model.train()
        for m in model.modules():  # frozen BatchNorm layers keep their running statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        t0, n = time.perf_counter(), 0
        tot = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for x, y in iterate_batches(train_ds, tcfg["batch_size"], shuffle=True, generator=gen, **loader):
            x = augment(x, tcfg["augmentation"], gen).to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            tot += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
        tot, correct = float(tot), int(correct)
        val_logits = predict_logits(model, data["val"].dataset, device, tcfg.get("eval_batch_size", 512), loader)
        val_acc = float((val_logits.argmax(1) == data["val"].labels).mean())
        history.append({"epoch": epoch + 1, "phase": "train", "loss": tot / max(n, 1),
                        "train_acc_running": correct / max(n, 1),
                        "val_acc": val_acc, "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{tot / max(n, 1):.3f}", val_acc=f"{val_acc:.3f}")
        if state_path is not None:
            with atomic_path(state_path) as tmp:
                torch.save(_training_state(model, opt, sched, scaler, gen, history), tmp)
        if on_epoch_end is not None:
            on_epoch_end(len(history))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def prediction_table(model: nn.Module, data: DataBundle, device, batch_size: int = 512,
                     loader: dict | None = None) -> pd.DataFrame:
    """The per-sample prediction table: id, split, label, prediction, correct, logit_0..logit_{K-1}."""
    frames = []
    for split, sd in data.splits.items():
        logits = predict_logits(model, sd.dataset, device, batch_size, loader)
        pred = logits.argmax(1)
        df = pd.DataFrame({"id": sd.ids, "split": split, "label": sd.labels, "prediction": pred,
                           "correct": pred == sd.labels})
        df = pd.concat([df, pd.DataFrame(logits, columns=[f"logit_{k}" for k in range(logits.shape[1])])], axis=1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def logits_of(table: pd.DataFrame) -> np.ndarray:
    """The logit columns of a prediction table as an (N, K) array."""
    return table[[c for c in table.columns if c.startswith("logit_")]].to_numpy(np.float32)


def accuracy_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, sample count and error count per split (train, val, test order)."""
    g = predictions.groupby("split", sort=False)["correct"]
    df = pd.DataFrame({"n": g.size(), "errors": g.size() - g.sum(), "accuracy": g.mean()})
    return df.reindex([s for s in ("train", "val", "test") if s in df.index]).reset_index()
