import pytest

from helpers.profiles import PARAMS_DIR, ProfileError, load_profile, params_hash


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
