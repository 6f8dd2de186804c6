"""Transfer learning (paper 2's training recipe) on tiny data, CPU only, offline.

Covers: the ``cub200-vgg16`` profile end to end on a synthetic CUB_200_2011 tree with random
weights (model ``vgg16_gap``, head phase then fine-tuning, cached model); ``train_head`` (best
validation epoch kept, only the linear layer trained); ``freeze_all_but`` / ``train_model`` with a
``training.trainable`` list; the transfer keys in the model's cache key; the default crop pad of
``augment``; ``evaluation.split_inputs`` on image files; validation of the new profile keys.
"""
import copy

import numpy as np
import pytest
import torch

from helpers.cache import params_hash
from helpers.datasets import load_data
from helpers.experiment import Experiment
from helpers.models import VGG16GAP, build_model
from helpers.paper2 import debugging
from helpers.profiles import ProfileError, load_profile
from helpers.training import augment, freeze_all_but, train_head, train_model

N_CLASSES, PER_CLASS, N_TEST = 3, 8, 2  # per class: the last N_TEST images are flagged test
VGG_TINY = {"weights": None, "image_size": 32, "training.head_epochs": 2, "training.epochs": 1,
            "training.batch_size": 8, "training.eval_batch_size": 16, "split.val_fraction": 0.2}


def _write_birds(folder, n, colour, seed):
    """n 40x40 RGB PNGs of one noisy colour (classes differ by colour: a learnable task)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        arr = np.clip(np.array(colour) + rng.integers(-40, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"bird_{i:02d}.png")
        names.append(f"bird_{i:02d}.png")
    return names


@pytest.fixture(scope="module")
def cub_tree(tmp_path_factory):
    """A tiny CUB_200_2011 tree (3 classes x 8 images, the official text files); returns (the
    folder holding CUB_200_2011, {id: "train" or "test"} as train_test_split.txt flags them)."""
    return _write_tree(tmp_path_factory.mktemp("cub"), PER_CLASS, N_TEST)


def _write_tree(parent, PER_CLASS, N_TEST):
    root = parent / "CUB_200_2011"
    images, labels, flags, classes, official = [], [], [], [], {}
    k = 0
    for c, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 40, 220)], start=1):
        folder = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {folder}")
        for j, name in enumerate(_write_birds(root / "images" / folder, PER_CLASS, colour, seed=c)):
            k += 1
            is_train = j < PER_CLASS - N_TEST
            images.append(f"{k} {folder}/{name}")
            labels.append(f"{k} {c}")
            flags.append(f"{k} {int(is_train)}")
            official[f"images/{folder}/{name}"] = "train" if is_train else "test"
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", flags), ("classes.txt", classes)):
        (root / name).write_text("\n".join(lines) + "\n")
    return parent, official


def _vgg_overrides(cub_tree):
    return {"data_dir": str(cub_tree[0]), **VGG_TINY}


@pytest.mark.slow
def test_cub200_vgg16_runs_offline_on_a_tiny_tree(cub_tree, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("cub200-vgg16", _vgg_overrides(cub_tree), progress=False)
    model = exp.model
    assert isinstance(model, VGG16GAP)
    assert model.last_conv_layer == "features.30" and model.gap_linear_head == ("features.30", "linear")
    assert model.linear.out_features == N_CLASSES
    assert exp.history["phase"].tolist() == ["head", "head", "train"]
    assert {"head_features", "model"} <= set(exp.cache.timings)
    g, y = exp.head_features()
    assert g["train"].shape == (len(exp.data["train"]), 512) and len(y["val"]) == len(exp.data["val"])

    # every image of the tree once, official test images in test, official train ones in train or val
    table = exp.predictions
    _, official = cub_tree
    assert sorted(table["id"]) == sorted(official)
    got = dict(zip(table["id"], table["split"]))
    assert all(got[i] == "test" for i, s in official.items() if s == "test")
    assert all(got[i] in ("train", "val") for i, s in official.items() if s == "train")
    n_train_official = N_CLASSES * (PER_CLASS - N_TEST)
    assert (table["split"] == "val").sum() == round(0.2 * n_train_official)

    # paper 2 fine-tunes conv5_3 (features.28; features.30 is its ReLU's max-pool) and the head
    assert debugging.trainable_names(model, "last_conv") == ["features.28", "linear"]

    again = Experiment("cub200-vgg16", _vgg_overrides(cub_tree), progress=False)
    assert again.history["phase"].tolist() == ["head", "head", "train"]
    assert "model" not in again.cache.timings and "head_features" not in again.cache.timings
    for (k, a), b in zip(model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.fixture(scope="module")
def vgg_weights_file(tmp_path_factory):
    """A seeded random VGG16 state dict (features only) standing in for pretrained weights."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in VGG16GAP(N_CLASSES).features.state_dict().items()}, path)
    return path


@pytest.mark.parametrize("weights", ["file", None])  # None: random init, drawn alike for the head's features
def test_head_only_model_is_its_trained_head_on_the_cached_features(weights, cub_tree, vgg_weights_file,
                                                                     tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    w = str(vgg_weights_file) if weights == "file" else None
    exp = Experiment("cub200-vgg16", {**_vgg_overrides(cub_tree), "weights": w, "training.epochs": 0,
                                      "training.head_epochs": 4, "training.head_lr": 0.05}, progress=False)
    history = exp.history
    assert history["phase"].tolist() == ["head"] * 4
    if w:  # the file's convolutions, untouched (no fine-tuning)
        assert torch.equal(exp.model.features[28].weight.cpu(), torch.load(w)["features.28.weight"])
    # the trained model sees the very features the head was trained on (the cached ones)
    g, _ = exp.head_features()
    with torch.no_grad():
        expect = exp.model.linear(g["val"].to(exp.device)).cpu().numpy()  # the model sits on exp.device
    logits = exp.split_table("val").filter(like="logit_").to_numpy()
    np.testing.assert_allclose(logits, expect, rtol=1e-4, atol=1e-5)
    best = history.loc[history["val_acc"].idxmax()]
    assert best["val_acc"] == 1.0  # the colours are learnable from the frozen features
    # and it carries the best head epoch: its accuracies are that epoch's
    acc = exp.predictions.groupby("split")["correct"].mean()
    assert acc["train"] == pytest.approx(best["train_acc"]) and acc["val"] == pytest.approx(best["val_acc"])


def _features(n, seed, noise, dim=32):
    """Three Gaussian clusters at 3 * e_0, 3 * e_1, 3 * e_2 in R^dim, labels 0, 1, 2, 0, ..."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.zeros(3, dim)
    centres[range(3), range(3)] = 3.0
    return centres[y] + noise * torch.randn(n, dim, generator=gen), y


def _head_data(noise):
    (gt, yt), (gv, yv) = _features(24, 0, noise), _features(30, 1, noise)
    return {"train": gt, "val": gv}, {"train": yt, "val": yv}


def _val_acc(model, g, y):
    with torch.no_grad():
        return (model.linear(g["val"]).argmax(1) == y["val"]).float().mean().item()


def test_train_head_learns_separable_features_and_trains_only_the_linear_layer(one_thread):
    model = build_model("small_cnn", 3, 1)
    before = copy.deepcopy(model.state_dict())
    g, y = _head_data(noise=0.5)
    tcfg = {"head_epochs": 8, "head_lr": 0.05, "batch_size": 8, "weight_decay": 0.0}
    history = train_head(model, g, y, tcfg, seed=0)
    assert [h["phase"] for h in history] == ["head"] * 8
    assert max(h["val_acc"] for h in history) >= 0.95
    assert _val_acc(model, g, y) == max(h["val_acc"] for h in history)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"linear.weight", "linear.bias"}


def test_train_head_keeps_the_earliest_best_validation_epoch(one_thread):
    g, y = _head_data(noise=1.0)
    tcfg = {"head_epochs": 12, "head_lr": 1.0, "batch_size": 8, "weight_decay": 0.0}
    torch.manual_seed(0)  # the initial head: not whatever the tests before this one left the generator at
    init = build_model("small_cnn", 3, 1)
    model = copy.deepcopy(init)
    accs = [h["val_acc"] for h in train_head(model, g, y, tcfg, seed=0)]
    assert accs[-1] < max(accs)  # the setting makes the last epoch worse than the best one
    assert _val_acc(model, g, y) == max(accs)
    # same seed, stopped at the earliest best epoch: the very same weights
    best_epoch = accs.index(max(accs)) + 1
    short = copy.deepcopy(init)
    train_head(short, g, y, {**tcfg, "head_epochs": best_epoch}, seed=0)
    assert torch.equal(short.linear.weight, model.linear.weight)
    assert torch.equal(short.linear.bias, model.linear.bias)


@pytest.fixture(scope="module")
def digits():
    cfg = load_profile("digits", {"training.epochs": 1, "training.trainable": ["linear"], "checkpoint": None})
    return cfg, load_data(cfg)


def test_train_model_with_trainable_list_trains_only_those_modules(digits, one_thread):
    cfg, data = digits
    model = build_model("small_cnn", len(data.classes), data.in_channels)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    history = train_model(model, data, cfg["training"], cfg["seed"], torch.device("cpu"), progress=False)
    assert len(history) == 1 and history[0]["phase"] == "train"
    changed = {k for k, p in model.named_parameters() if not torch.equal(before[k], p)}
    assert changed == {"linear.weight", "linear.bias"}
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again after training


def test_train_model_with_trainable_list_keeps_frozen_batchnorm_statistics(digits, one_thread):
    cfg, data = digits
    model = build_model("small_cnn", len(data.classes), data.in_channels)
    before = {k: b.clone() for k, b in model.named_buffers()}
    train_model(model, data, cfg["training"], cfg["seed"], torch.device("cpu"), progress=False)
    assert all(torch.equal(before[k], b) for k, b in model.named_buffers())


def test_freeze_all_but_names_the_key_and_the_bad_module(digits):
    cfg, data = digits
    model = build_model("small_cnn", len(data.classes), data.in_channels)
    assert freeze_all_but(model, ["block.0", "linear"]) == ["block.0", "linear"]
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {"block.0.weight", "linear.weight",
                                                                           "linear.bias"}
    assert freeze_all_but(model, "all") == [""] and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"training\.trainable.*'no_such_layer'"):
        freeze_all_but(model, ["linear", "no_such_layer"])
    with pytest.raises(ValueError, match="training.trainable"):  # raised before any training step
        train_model(model, data, {**cfg["training"], "trainable": ["nope"]}, 0, torch.device("cpu"),
                    progress=False)


def test_transfer_keys_enter_the_model_cache_key_only_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    train = {"checkpoint": None}  # the model these settings train, not the committed one
    base = Experiment("digits", train).model_params
    assert not {"head_epochs", "head_lr", "trainable"} & set(base["training"])
    # the defaults, given explicitly, are still the old key
    assert Experiment("digits", {**train, "training.trainable": "all", "training.head_epochs": 0}).model_params == base
    head = Experiment("digits", {**train, "training.head_epochs": 3}).model_params
    assert head["training"]["head_epochs"] == 3 and head["data"] == base["data"]
    assert params_hash(head) != params_hash(base)
    listed = Experiment("digits", {**train, "training.trainable": ["linear"]}).model_params
    assert listed["training"]["trainable"] == ["linear"] and params_hash(listed) != params_hash(base)


@pytest.mark.parametrize("size", [16, 32, 224])
def test_augment_default_pad_is_an_eighth_of_the_side(size):
    """A constant image of ones: zero rows/columns are padding, and the band is at most size/8 wide."""
    pad = size // 8
    x = torch.ones(200, 1, size, size)
    out = augment(x, "crop_flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert (out[:, :, pad:size - pad, pad:size - pad] == 1).all()  # never padding farther than pad in
    zero_rows = (out == 0).all(dim=3).sum(dim=2).flatten()  # per image: rows entirely padding
    zero_cols = (out == 0).all(dim=2).sum(dim=2).flatten()
    assert zero_rows.max() == pad and zero_cols.max() == pad  # reached, never exceeded
    assert ((out == 0) | (out == 1)).all()


def test_split_inputs_decodes_image_files_once(cub_tree, tmp_path, monkeypatch):
    from helpers import evaluation

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("cub200-vgg16", _vgg_overrides(cub_tree), progress=False)
    ds = exp.data["test"].dataset
    x = evaluation.split_inputs(exp, "test")
    assert isinstance(x, torch.Tensor) and x.shape == (N_CLASSES * N_TEST, 3, 32, 32)
    assert torch.equal(x, torch.stack([ds[i][0] for i in range(len(ds))]))
    assert evaluation.split_inputs(exp, "test") is x  # memoised in exp.memo
    monkeypatch.setattr("helpers.evaluation.IN_MEMORY_BYTES", 0)
    loader = evaluation.split_inputs(exp, "test")
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert torch.equal(torch.cat([b for b, _ in loader]), x)


@pytest.mark.parametrize("key, value", [("training.trainable", 5), ("training.head_epochs", -1),
                                        ("training.head_lr", "fast")])
def test_invalid_transfer_keys_are_named(key, value):
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        load_profile("digits", {key: value})


def test_paper2_profiles_load_and_validate():
    vgg = load_profile("cub200-vgg16")
    assert vgg["model"] == "vgg16_gap" and vgg["dataset"] == "cub200"
    assert vgg["training"]["head_epochs"] > 0 and vgg["training"]["trainable"] == "all"
    cub = load_profile("cub100")
    assert cub["model"] == "squeezenet1_1" and cub["dataset"] == "cub200"
    np.testing.assert_allclose(cub["normalize"]["std"], [1 / 255] * 3, rtol=1e-5)  # Caffe: x*255 - mean
    np.testing.assert_allclose(np.array(cub["normalize"]["mean"]) * 255, [123.68, 116.779, 103.939], atol=0.01)
    assert cub["training"]["head_epochs"] > 0


@pytest.fixture(scope="module")
def cub_tree_big_test(tmp_path_factory):
    """3 classes x 14 images, 8 of them flagged test: enough to split the test photos three ways."""
    return _write_tree(tmp_path_factory.mktemp("cub_big"), 14, 8)


@pytest.mark.slow
def test_analysis_splits_from_held_out_test_photos(cub_tree_big_test, tmp_path, monkeypatch):
    """``split.analysis_from_test``: the model trains on the official train photos only; the
    train / val / test of every later stage are the official test photos, split stratified."""
    cub_tree = cub_tree_big_test
    cfg = load_profile("cub200-vgg16", {**_vgg_overrides(cub_tree), "split.analysis_from_test": [0.5, 0.25, 0.25]})
    data = load_data(cfg)
    _, official = cub_tree
    analysis = [i for s in ("train", "val", "test") for i in data[s].ids]
    assert sorted(analysis) == sorted(i for i, s in official.items() if s == "test")  # each test photo once
    own = data.model_bundle()
    assert sorted([*own["train"].ids, *own["val"].ids]) == sorted(i for i, s in official.items() if s == "train")
    assert set(own["train"].ids).isdisjoint(own["val"].ids)
    for s in ("train", "val", "test"):  # stratified: every class in every analysis split
        assert set(data[s].labels) == set(range(N_CLASSES))
    manifest = data.manifest()
    assert set(manifest["split"]) == {"train", "val", "test", "model_train", "model_val"}
    assert load_data(cfg).fingerprint == data.fingerprint != load_data(load_profile(
        "cub200-vgg16", _vgg_overrides(cub_tree))).fingerprint

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment(cfg, progress=False)
    own_acc = exp.model_split_accuracy()
    assert set(own_acc) == {"model_train", "model_val"}
    trained = exp.history[exp.history.phase == "train"]
    assert own_acc["model_val"] == pytest.approx(trained.val_acc.iloc[-1])  # selected on its own val photos


@pytest.mark.parametrize("pool, dataset", [([0.5, 0.5], "cub200"), ([0.5, 0.25, 0.3], "cub200"),
                                           ([0.5, 0.25, 0.25], "digits")])
def test_analysis_from_test_is_validated(pool, dataset):
    with pytest.raises(ProfileError, match="analysis_from_test"):
        load_profile("digits", {"dataset": dataset, "split.analysis_from_test": pool})


def test_analysis_split_too_small_for_the_classes_is_named(cub_tree):
    cfg = load_profile("cub200-vgg16", {**_vgg_overrides(cub_tree), "split.analysis_from_test": [0.5, 0.25, 0.25]})
    with pytest.raises(ValueError, match="split.analysis_from_test.*6 test photos.*3 classes"):
        load_data(cfg)


def test_cub100_without_its_data_or_weights_says_where_it_looked(cub_tree_big_test, tmp_path, monkeypatch):
    from helpers.datasets import DataNotFoundError

    monkeypatch.setattr("helpers.datasets.REPO_ROOT", tmp_path / "repo")  # no ../shared beside it
    monkeypatch.delenv("COMPANION_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="cub200") as e:
        load_data(load_profile("cub100", {"data_dir": str(tmp_path / "nowhere")}))
    assert "nowhere" in str(e.value) and "train_test_split.txt" in str(e.value)

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment("cub100", {"data_dir": str(cub_tree_big_test[0]), "checkpoint": None, "image_size": 32,
                                "weights": str(tmp_path / "no-such-weights.pth")}, progress=False)
    with pytest.raises(FileNotFoundError, match="(?s)SqueezeNet 1.1 features.*no-such-weights"):
        exp.model


@pytest.mark.slow
def test_generators_on_the_models_own_photos_are_the_variant_beside_the_default(cub_tree_big_test, tmp_path,
                                                                               monkeypatch, one_thread):
    """Paper 2 trains the generators on the model's training set; where the analysis splits are held out
    from it (``split.analysis_from_test``), ``generators(exp, "model_train")`` trains them on those photos,
    under a cache key of its own (the default's unchanged), and ``generator_data_rows`` compares the two."""
    from helpers import evaluation
    from helpers.paper2 import stages as paper2

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    over = {**_vgg_overrides(cub_tree_big_test), "split.analysis_from_test": [0.5, 0.25, 0.25],
            "cfe.epochs": 2, "metrics.n_bootstrap": 20}
    exp = Experiment(load_profile("cub200-vgg16", over), progress=False)
    own, default = paper2.generators(exp, "model_train"), paper2.generators(exp)
    assert not torch.equal(own[0].weight, default[0].weight)
    n_own = len(exp.data.extra["model_splits"]["train"].ids)
    assert n_own != len(exp.data["train"].ids)
    stages = {k.split("-")[0]: v for k, v in exp.cache.timings.items()}
    assert "cfe_generators" in stages and "pooled_features_model_train" in stages

    a = paper2.analysis(exp)
    test = a.split("test")
    msp = evaluation.baseline_table(exp).set_index("id").loc[test.id, "msp"].to_numpy()
    t1 = paper2.table1(exp, a, msp)
    reports = evaluation.evaluate_scores(exp, paper2.error_scores(a), paper2.CFE_SCORES)[0]
    rows = paper2.generator_data_rows(exp, a, t1, reports, msp)
    assert set(rows) == {"analysis_train", "model_train"}
    assert rows["analysis_train"]["training_photos"] == len(exp.data["train"].ids)
    assert rows["model_train"]["training_photos"] == n_own
    assert rows["model_train"]["steps"] == 2 * -(-n_own // exp.cfg["cfe"]["batch_size"])
    assert rows["analysis_train"]["gc_jaccard_with_default"] == 1.0  # the default compared with itself
    assert 0.0 <= rows["model_train"]["gc_jaccard_with_default"] <= 1.0
    assert paper2.generator_data_metrics(rows) == {"cfe": {"generator_data": rows}}


def test_generators_on_the_models_own_photos_need_held_out_analysis_splits(cub_tree, tmp_path, monkeypatch):
    from helpers.paper2 import stages as paper2

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    exp = Experiment(load_profile("cub200-vgg16", _vgg_overrides(cub_tree)), progress=False)
    with pytest.raises(ValueError, match="data='model_train' needs held-out analysis splits.*analysis_from_test"):
        paper2.generators(exp, "model_train")
    with pytest.raises(ValueError, match="data='elsewhere' is not valid; valid: analysis_train, model_train"):
        paper2.generators(exp, "elsewhere")
    assert paper2.generator_data_rows(exp, None, None, None, None) == {}
    assert paper2.generator_data_metrics({}) == {}
