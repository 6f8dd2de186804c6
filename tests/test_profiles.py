import pytest

from helpers.cache import params_hash
from helpers.paths import PARAMS_DIR
from helpers.profiles import ProfileError, load_profile


@pytest.mark.parametrize("name", sorted(p.stem for p in PARAMS_DIR.glob("*.yaml")))
def test_shipped_profiles_validate(name):
    cfg = load_profile(name)
    assert cfg["name"] == name
    assert cfg["training"]["epochs"] >= 0


def test_overrides_with_dotted_keys():
    cfg = load_profile("digits", {"training.epochs": 1, "split.limit_train": 100, "checkpoint": None})
    assert cfg["training"]["epochs"] == 1 and cfg["split"]["limit_train"] == 100
    assert load_profile("digits")["training"]["epochs"] == 6  # the file itself is untouched


def test_unknown_key_is_named():
    with pytest.raises(ProfileError, match=r"unknown key 'training.epoch'.*valid keys"):
        load_profile("digits", {"training.epoch": 3})


def test_invalid_choice_names_key_value_and_valid():
    with pytest.raises(ProfileError, match=r"'model' = 'resnet99' is not valid; valid: small_cnn"):
        load_profile("digits", {"model": "resnet99"})


def test_wrong_type_and_range():
    with pytest.raises(ProfileError, match=r"'training.lr' = 'fast' has the wrong type"):
        load_profile("digits", {"training.lr": "fast"})
    with pytest.raises(ProfileError, match=r"'seed' = -1 is below the minimum 0"):
        load_profile("digits", {"seed": -1})


def test_missing_required_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\ndataset: digits\nmodel: small_cnn\nimage_size: 8\nseed: 0\n"
                 "normalize: {mean: [0.5], std: [0.5]}\n")
    with pytest.raises(ProfileError, match=r"missing required key 'training'|missing required key 'training.epochs'"):
        load_profile(str(p))


def test_unknown_profile_lists_known():
    with pytest.raises(ProfileError, match=r"not a known profile; valid: .*digits"):
        load_profile("nope")


def test_params_hash_stable_and_sensitive():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_profile_by_relative_path(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text((PARAMS_DIR / "digits.yaml").read_text().replace("name: digits", "name: mine"))
    monkeypatch.chdir(tmp_path)
    assert load_profile("mine.yaml")["name"] == "mine"


def test_grid_extra_and_cross_fit_are_checked():
    cfg = load_profile("cub100")
    assert cfg["lcr"]["grid_extra"] == [["gf", 0.003], ["gf", 0.01]] and cfg["conductance"]["cross_fit"]["folds"] == 5
    assert load_profile("digits")["conductance"]["cross_fit"]["folds"] is None  # off unless a profile sets it
    with pytest.raises(ProfileError, match=r"'lcr.grid_extra' = .* is not valid at \['gauss', 0.01\]; valid: .*gf"):
        load_profile("digits", {"lcr.grid_extra": [["gauss", 0.01]]})
    with pytest.raises(ProfileError, match=r"'lcr.grid_extra' .* is not valid at \['gf', 2\]"):
        load_profile("digits", {"lcr.grid_extra": [["gf", 2]]})
    with pytest.raises(ProfileError, match=r"'conductance.cross_fit.fractions' = \[0.5\] is not valid; .*include 1"):
        load_profile("digits", {"conductance.cross_fit.fractions": [0.5]})
    with pytest.raises(ProfileError, match=r"'conductance.cross_fit.folds' = 1 is below the minimum 2"):
        load_profile("digits", {"conductance.cross_fit.folds": 1})


# ------------------------------------------------------------------ one source for each default
def _kw_defaults(fn) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_method_defaults_are_the_profile_defaults():
    """The keyword and dataclass defaults of the methods are the papers' values that profiles.DEFAULTS
    holds: a function called from Python without a profile does what a profile that leaves the key out does."""
    from dataclasses import fields

    from helpers.paper1 import joint, lcr
    from helpers.paper1.detectors import train_conductance_detector
    from helpers.paper2.cfe import GeneratorConfig
    from helpers.paper2.debugging import DebugConfig
    from helpers.profiles import DEFAULTS

    det = _kw_defaults(train_conductance_detector)
    assert {k: det[k] for k in DEFAULTS["conductance"]["detector"]} == DEFAULTS["conductance"]["detector"]
    assert _kw_defaults(joint.out_of_fold_scores)["k"] == DEFAULTS["joint"]["folds"]
    cf = _kw_defaults(joint.cross_fitted_detector)
    assert cf["inner_val"] == DEFAULTS["conductance"]["cross_fit"]["inner_val"]
    gen = {f.name: f.default for f in fields(GeneratorConfig)}
    assert gen == {k: DEFAULTS["cfe"][k] for k in gen}
    dbg = {f.name: f.default for f in fields(DebugConfig)}
    assert {k: dbg[k] for k in ("lr", "momentum", "batch_size", "epochs", "trainable")} == \
        {k: DEFAULTS["debugging"][k] for k in ("lr", "momentum", "batch_size", "epochs", "trainable")}
    assert [dbg["l1"], dbg["l2"]] in DEFAULTS["debugging"]["grid"]  # the authors' cell of the grid
    assert dbg["augmentation"] == DEFAULTS["training"]["augmentation"]  # debugging.augmentation null: training's
    screen = _kw_defaults(lcr.screen_mutants)
    assert screen["threshold"] == DEFAULTS["lcr"]["accept_threshold"]
    sprt = _kw_defaults(lcr.sprt_detect)
    assert (sprt["alpha"], sprt["beta"], sprt["indifference"]) == \
        (DEFAULTS["lcr"]["sprt_alpha"], DEFAULTS["lcr"]["sprt_beta"], DEFAULTS["lcr"]["sprt_indifference"])


def test_names_come_from_one_place():
    """Model, dataset and operator names: helpers.names, read by the schema and by the modules that build them."""
    from helpers import datasets, models, names
    from helpers.paper1 import mutation
    from helpers.profiles import SCHEMA

    assert SCHEMA["model"][2] is names.MODEL_NAMES and models.MODEL_NAMES is names.MODEL_NAMES
    assert SCHEMA["dataset"][2] is names.DATASET_NAMES and set(datasets.LOADERS) == set(names.DATASET_NAMES)
    assert mutation.OPERATORS is names.MUTATION_OPERATORS
    assert tuple(mutation.OPERATOR_FUNCTIONS) == names.MUTATION_OPERATORS  # every name has its operator


def _own_model_profile(**changes) -> dict:
    import yaml

    raw = yaml.safe_load((PARAMS_DIR / "example-own-model.yaml").read_text())
    raw.update(name="own-model-defaults")
    for key in ("image_size", "normalize"):
        raw.pop(key)
    raw.update(changes)
    return raw


def test_image_size_and_normalisation_default_to_the_torchvision_weights_transforms():
    import torchvision

    cfg = load_profile(_own_model_profile(weights="IMAGENET1K_V1"))
    t = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert cfg["image_size"] == t.crop_size[0] == 224
    assert cfg["normalize"]["mean"] == list(t.mean) and cfg["normalize"]["std"] == list(t.std)
    # another builder's weights give their own crop size; a key the profile sets is kept
    cfg = load_profile(_own_model_profile(model="torchvision.efficientnet_b3", weights="DEFAULT", image_size=96,
                                          normalize={"mean": [0.5, 0.5, 0.5]}))
    assert cfg["image_size"] == 96 and cfg["normalize"]["mean"] == [0.5, 0.5, 0.5]
    assert cfg["normalize"]["std"] == list(torchvision.models.EfficientNet_B3_Weights.DEFAULT.transforms().std)


def test_without_torchvision_weights_image_size_stays_required_and_the_error_says_how():
    for changes in ({"weights": None}, {"model": "tests.zoo_model:build", "weights": "IMAGENET1K_V1"}):
        with pytest.raises(ProfileError, match=r"missing required key 'image_size'.*torchvision weights"):
            load_profile(_own_model_profile(**changes))


def test_a_variant_caches_its_stages_beside_its_base(tmp_path, monkeypatch):
    """cifar10-lcr-nai computes the same model, predictions, conductance and grid screening as cifar10,
    under the same stage keys: sharing artifacts/cifar10/ computes them once."""
    from helpers.experiment import Experiment

    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "art"))
    variant, base = Experiment("cifar10-lcr-nai", check=False), Experiment("cifar10", check=False)
    assert variant.artifacts_dir == base.artifacts_dir == tmp_path / "art" / "cifar10"
    assert variant.output_dir.name == "cifar10-lcr-nai"


@pytest.mark.parametrize("name", ["digits", "cifar10-lcr-nai"])
def test_a_loaded_profile_loads_again_as_itself(name):
    """Experiment(load_profile(...)) passes the loaded dict back in: a variant's ``base`` and a plain
    profile's ``base: null`` leave it unchanged."""
    cfg = load_profile(name)
    assert load_profile(cfg) == cfg
