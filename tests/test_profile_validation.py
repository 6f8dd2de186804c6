"""Every profile value is checked when the profile loads: no mistaken input gives a number (or a raw traceback
much later).  Each error is one ProfileError line naming the key, the value and what is valid."""
import math

import pytest

from helpers.paths import PARAMS_DIR
from helpers.profiles import ProfileError, load_profile, parse_overrides, parse_set

DIGITS = (PARAMS_DIR / "digits.yaml").read_text()


def _mine(tmp_path, text: str = "", name: str = "mine", base: str = DIGITS):
    """A user's copy of the digits profile named ``name``, ``text`` appended (a later section of the same name
    would be a duplicate key: the tests below replace keys through ``_replace``)."""
    p = tmp_path / f"{name}.yaml"
    p.write_text(base.replace("name: digits", f"name: {name}") + text)
    return p


def _replace(old: str, new: str) -> str:
    assert old in DIGITS
    return DIGITS.replace(old, new)


def _refused(match: str, *args):
    with pytest.raises(ProfileError, match=match) as e:
        load_profile(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ 1. NaN and +-inf
@pytest.mark.parametrize("key, old, new", [
    ("cfe.tau", "  tau: 0.5", "  tau: .nan"),
    ("training.lr", "  lr: 0.003", "  lr: .inf"),
    ("split.val_fraction", "  val_fraction: 0.25", "  val_fraction: .NaN"),
    ("lcr.accept_threshold", "  accept_threshold: 0.9", "  accept_threshold: -.inf"),
])
def test_nan_and_inf_are_refused_in_a_file(tmp_path, key, old, new):
    p = _mine(tmp_path, base=_replace(old, new))
    msg = _refused(rf"mine\.yaml: '{key}' = (nan|inf|-inf) is not a finite number; valid: a number from", str(p))
    assert key in msg


@pytest.mark.parametrize("override", [
    {"training.lr": math.nan}, {"cfe.tau": math.inf}, {"lcr.rate": math.nan, "lcr.operator": "gf"},
    {"normalize.mean": [math.nan]}, {"normalize.std": [math.inf]}, {"lcr.grid_rates": [0.01, math.nan]},
    {"debugging.grid": [[0, 0], [math.inf, 0]]}, {"conductance.cross_fit.fractions": [math.nan, 1.0]},
])
def test_nan_and_inf_are_refused_in_overrides_and_lists(override):
    key = next(iter(override))
    _refused(rf"'{key}' = .*(nan|inf).*(not a finite number|is not valid)", "digits", override)


def test_nan_in_analysis_from_test_is_refused():
    _refused(r"'split.analysis_from_test' = \[nan, 0.5, 0.5\] is not valid; valid: three fractions",
             "cub100", {"split.analysis_from_test": [math.nan, 0.5, 0.5], "checkpoint": None})


# ------------------------------------------------------------------ 2. duplicate keys, safe loading
def test_a_duplicate_section_is_refused_naming_key_and_lines(tmp_path):
    p = _mine(tmp_path, "conductance:\n  n_steps: 3\n")
    msg = _refused(r"mine\.yaml, line \d+: duplicate key 'conductance' \(first at line \d+\)", str(p))
    assert "merge the two" in msg
    nested = _mine(tmp_path, base=_replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.1\n"))
    _refused(r"duplicate key 'training.lr'", str(nested))


def test_yaml_merge_keys_are_no_duplicates_and_python_tags_stay_refused(tmp_path):
    p = _mine(tmp_path, base=_replace("  n_bootstrap: 1000", "  <<: {n_bootstrap: 50}\n  n_bootstrap: 1000"))
    assert load_profile(str(p))["metrics"]["n_bootstrap"] == 1000  # YAML's merge: the explicit key wins
    tag = _mine(tmp_path, base=_replace("data_dir: null", "data_dir: !!python/object/apply:os.getcwd []"))
    _refused(r"not valid YAML \(could not determine a constructor", str(tag))


# ------------------------------------------------------------------ 3. rules across keys
@pytest.mark.parametrize("override, match", [
    ({"split.val_fraction": 0.6, "split.test_fraction": 0.4}, r"'split.val_fraction' \+ 'split.test_fraction' = "
     r"0.6 \+ 0.4 leaves no training split; valid: a sum below 1"),
    ({"split.val_fraction": 0.9, "split.test_fraction": None}, r"= 0.9 \+ 0.2 leaves no training split"),
    ({"lcr.operator": "gf"}, r"'lcr.operator' = 'gf' with 'lcr.rate' = None is not valid; valid: both set"),
    ({"lcr.rate": 0.01}, r"'lcr.operator' = None with 'lcr.rate' = 0.01 is not valid"),
    ({"lcr.operator": "gauss", "lcr.rate": 0.01}, r"'lcr.operator' = 'gauss' is not valid; valid: gf, nai"),
    ({"lcr.grid_operators": ["gf", "gauss"]}, r"'lcr.grid_operators' = .* is not valid at 'gauss'; valid: .*gf"),
    ({"lcr.grid_rates": [0.01, 0]}, r"'lcr.grid_rates' = \[0.01, 0\] is not valid at 0; valid: .*\(0, 1\]"),
    ({"lcr.grid_rates": [1.5]}, r"'lcr.grid_rates' = \[1.5\] is not valid at 1.5"),
    ({"lcr.grid_operators": []}, r"'lcr.grid_operators' = \[\] x .* has no cell"),
    ({"debugging.grid": []}, r"'debugging.grid' = \[\] is not valid; valid: a non-empty list of \[l1, l2\] pairs"),
    ({"debugging.grid": [[0, 0], [-1, 0]]}, r"'debugging.grid' = .* is not valid at \[-1, 0\]"),
    ({"debugging.grid": [[0, 0], [0.1]]}, r"'debugging.grid' = .* is not valid at \[0.1\]"),
    ({"debugging.grid": [[0, 0], ["a", 0]]}, r"'debugging.grid' = .* is not valid at \['a', 0\]"),
    ({"debugging.trainable": []}, r"'debugging.trainable' = \[\] is not valid; valid: 'last_conv' or 'all', or a "
     "non-empty list"),
    ({"debugging.trainable": [3]}, r"'debugging.trainable' = \[3\] is not valid"),
    ({"debugging.trainable": "linear"}, r"'debugging.trainable' = 'linear' is not valid.*\(one module: \[linear\]\)"),
    ({"training.trainable": "last_conv", "checkpoint": None}, r"'training.trainable' = 'last_conv' is not valid; "
     "valid: 'all', or a non-empty list"),
    ({"training.trainable": [], "checkpoint": None}, r"'training.trainable' = \[\] is not valid"),
    ({"normalize.std": ["a"]}, r"'normalize.std' = \['a'\] is not valid at 'a'; valid: a non-empty list of finite"),
    ({"normalize.mean": []}, r"'normalize.mean' = \[\] is not valid; valid: a non-empty list"),
    ({"normalize.std": [0.0]}, r"'normalize.std' = \[0.0\] is not valid at 0.0; valid: .* each > 0"),
    ({"normalize.mean": [0.5, 0.5]}, r"'normalize' = .* is not valid; valid: mean and std of equal length"),
    ({"conductance.classes": []}, r"'conductance.classes' = \[\] is not valid; valid: a non-empty list of class"),
    ({"conductance.classes": [1, -1]}, r"'conductance.classes' = \[1, -1\] is not valid at -1"),
    ({"conductance.classes": [True]}, r"'conductance.classes' = \[True\] is not valid at True"),
    ({"seed": 2**70}, r"'seed' = 1180591620717411303424 is above the maximum 4294967295"),
])
def test_rules_across_keys_and_list_items(override, match):
    _refused(match, "digits", override)


def test_valid_values_at_the_edges_still_load():
    cfg = load_profile("digits", {"seed": 2**32 - 1, "split.val_fraction": 0.5, "split.test_fraction": 0.49,
                                  "lcr.operator": "gf", "lcr.rate": 1.0, "lcr.grid_rates": [1], "checkpoint": None,
                                  "debugging.trainable": ["block", "linear"], "training.trainable": ["linear"],
                                  "debugging.grid": [[0, 0], [1, 0]], "conductance.classes": [0]})
    assert cfg["seed"] == 2**32 - 1 and cfg["lcr"]["operator"] == "gf"


# ------------------------------------------------------------------ 4. 1e-3 is a number
def test_exponent_numbers_without_a_dot_are_floats(tmp_path):
    p = _mine(tmp_path, base=_replace("  lr: 0.003", "  lr: 3e-3").replace("  tau: 0.5", "  tau: 5E-1")
              .replace("  seeds: 10", "  seeds: 10\n  grid: [[0, 0], [1e-3, 2e-5], [1e+1, 2e0]]"))
    cfg = load_profile(str(p))
    assert cfg["training"]["lr"] == 0.003 and isinstance(cfg["training"]["lr"], float) and cfg["cfe"]["tau"] == 0.5
    assert cfg["debugging"]["grid"] == [[0, 0], [0.001, 2e-05], [10.0, 2.0]]
    assert parse_set(["training.lr=1e-3"]) == {"training.lr": 0.001}
    assert load_profile("digits", '{"training.lr": 1e-3, "checkpoint": null}')["training"]["lr"] == 0.001
    # text from elsewhere (a Python dict, another YAML reader) that looks like a number: the message says how
    _refused(r"'training.lr' = '1e-3' has the wrong type; expected int or float \(a number: write it with a dot, "
             r"e.g. 1.0e-3\)", "digits", {"training.lr": "1e-3"})


# ------------------------------------------------------------------ 5. not UTF-8
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_a_file_that_is_not_utf8_is_named(tmp_path, encoding):
    p = tmp_path / "mine.yaml"
    p.write_bytes(DIGITS.replace("name: digits", "name: mine").encode(encoding))
    _refused(r"mine\.yaml: not UTF-8 text \(it looks like UTF-16 or UTF-32\).*save it as UTF-8", str(p))
    p.write_bytes(DIGITS.replace("name: digits", "name: mine").encode("utf-8-sig"))  # a byte order mark is fine
    assert load_profile(str(p))["name"] == "mine"


# ------------------------------------------------------------------ 6. the name
@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "a\\b", "x..y", ".hidden", "-x", "a" * 65, "", "a b"])
def test_a_name_that_is_no_plain_folder_name_is_refused(name):
    _refused(r"'name' = .* is not valid; valid: letters, digits, '-', '_' and '.'", "digits", {"name": name})


def test_a_copy_claiming_a_committed_name_is_refused(tmp_path):
    same = _mine(tmp_path, name="digits")  # an identical copy gives the same results: allowed
    assert load_profile(str(same)) == load_profile("digits")
    reformatted = tmp_path / "reformatted.yaml"  # comments and layout do not count, nor an explicit default
    reformatted.write_text(DIGITS + "download: false\n")
    assert load_profile(str(reformatted)) == load_profile("digits")
    changed = _mine(tmp_path, name="digits", base=_replace("  epochs: 6", "  epochs: 7"))
    _refused(r"digits\.yaml: 'name' = 'digits' is the name of the committed profile params/digits\.yaml, whose "
             r"settings differ; valid: a new name .*name: my-digits", str(changed))
    mine = _mine(tmp_path, base=_replace("  epochs: 6", "  epochs: 7"))
    assert load_profile(str(mine))["name"] == "mine"
    _refused(r"'name' = 'digits' is the name of the committed profile", str(mine), {"name": "digits"})
    _refused(r"'name' = 'cifar10' is the name of the committed profile", "digits", {"name": "cifar10"})
    # overrides of a committed profile keep its name (they write to figures/<name>-<hash>/)
    assert load_profile("digits", {"training.eval_batch_size": 100})["name"] == "digits"


# ------------------------------------------------------------------ 7. malformed override values
@pytest.mark.parametrize("items, match", [
    (["training.lr=[1"], r"--set: 'training.lr' = '\[1' is not a valid YAML value \(line 1, column \d+: .*\); "
     "valid: a number"),
    (["lcr.grid_rates={a: 1"], r"--set: 'lcr.grid_rates' = '\{a: 1' is not a valid YAML value"),
    (["training.lr"], r"--set: 'training.lr' is not valid; valid: key=value"),
    (["=1"], r"--set: '=1' has no key"),
])
def test_malformed_set_values_are_named(items, match):
    with pytest.raises(ProfileError, match=match):
        parse_set(items)
    if all("=" in i for i in items):  # parse_overrides takes --set items too
        with pytest.raises(ProfileError, match=match):
            load_profile("digits", items)


@pytest.mark.parametrize("text, match", [
    ('{"training.lr": [1}', r"overrides: .* is not a JSON or YAML mapping \(line 1, column \d+: .*\)"),
    ("{a: 1, a: 2}", r"overrides: .* gives 'a' twice"),
])
def test_malformed_override_strings_are_named(text, match):
    with pytest.raises(ProfileError, match=match):
        parse_overrides(text)


def test_a_variant_states_only_what_it_changes_over_its_base(tmp_path):
    """``base: <profile>``: the committed variant cifar10-lcr-nai is cifar10 with LCR's setting fixed."""
    variant, base = load_profile("cifar10-lcr-nai"), load_profile("cifar10")
    assert {k for k in variant if variant[k] != base[k]} == {"name", "description", "base", "lcr"}
    assert (variant["base"], base["base"]) == ("cifar10", None)  # the root of the chain: whose cache it shares
    assert (variant["lcr"]["operator"], variant["lcr"]["rate"]) == ("filter_nai", 0.01)
    assert {k for k in variant["lcr"] if variant["lcr"][k] != base["lcr"][k]} == {"operator", "rate"}
    own = tmp_path / "mine.yaml"
    own.write_text("base: digits\nname: my-digits\ncheckpoint: null\ntraining:\n  epochs: 3\n")
    cfg = load_profile(own, {"seed": 4})
    assert (cfg["name"], cfg["training"]["epochs"], cfg["seed"]) == ("my-digits", 3, 4)
    assert cfg["training"]["batch_size"] == load_profile("digits")["training"]["batch_size"]


@pytest.mark.parametrize("text, match", [
    ("base: nosuch\nname: x\n", r"'base' = 'nosuch' is not a committed profile; valid: .*digits"),
    ("base: digits\n", r"'name' = None must be set to a name other than its base's \('digits'\)"),
    ("base: digits\nname: digits\n", r"'name' = 'digits' must be set to a name other than its base's"),
    ("base: [digits]\nname: x\n", r"'base' = \['digits'\] is not a committed profile"),
])
def test_a_bad_base_is_named(tmp_path, text, match):
    path = tmp_path / "variant.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=match):
        load_profile(path)


def test_a_chain_of_bases_that_loops_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.profiles.PARAMS_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text("base: b\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a\nname: b\n")
    with pytest.raises(ProfileError, match=r"'base' = 'b' leads back to itself \(b -> a -> b\)"):
        load_profile(tmp_path / "a.yaml")


def test_a_variant_of_a_variant_keeps_the_root_as_its_base(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.profiles.PARAMS_DIR", tmp_path)
    (tmp_path / "digits.yaml").write_text(DIGITS)
    (tmp_path / "v1.yaml").write_text("base: digits\nname: v1\ncheckpoint: null\nseed: 3\n")
    (tmp_path / "v2.yaml").write_text("base: v1\nname: v2\ntraining:\n  epochs: 2\n")
    cfg = load_profile("v2")
    assert (cfg["name"], cfg["base"], cfg["seed"], cfg["training"]["epochs"], cfg["checkpoint"]) == \
        ("v2", "digits", 3, 2, None)
