"""The README and docs/ agree with the committed metrics (docs/README.md, "Numbers in these pages").

Generated blocks must be what ``helpers.tools.report`` makes from ``tests/reference/<profile>/metrics.json``;
every number in prose annotated ``<!-- m:PROFILE:EXPR -->`` must be EXPR at its printed precision, and every
verdict annotated ``<!-- v:PROFILES:KIND(...) -->`` must hold and be what its words say.
The negative tests show that a wrong, stale or orphan number, and a flipped or stale verdict, are caught,
on the real pages too."""
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers.paths import REFERENCE_DIR, REPO_ROOT
from helpers.tools.report import (
    ANNOTATION,
    GENERATED,
    VERDICT,
    VERDICTS,
    doc_files,
    docs_problems,
    evaluate,
    generated_problems,
    metric_value,
    number_problems,
    printed_matches,
    refresh_readme,
    verdict_problems,
    verdict_words,
)

DOCS = REPO_ROOT / "docs"
#: pages that others write later, linked already
PENDING = {DOCS / "gpu.md"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the real pages
def test_every_number_in_readme_and_docs_agrees_with_the_references():
    problems = docs_problems(REPO_ROOT, REFERENCE_DIR)
    assert not problems, "\n".join(problems)


def test_generated_blocks_are_up_to_date(tmp_path):
    """Refreshing a copy of the README and docs/ from the references changes nothing."""
    shutil.copy(REPO_ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(DOCS, tmp_path / "docs")
    assert refresh_readme(tmp_path / "README.md", REFERENCE_DIR) is False


def test_the_pages_carry_annotations_and_blocks():
    """The check is not vacuous: the write-ups quote their numbers through annotations."""
    counts = {f.name if f.parent == DOCS else str(f.relative_to(REPO_ROOT)): len(ANNOTATION.findall(_text(f)))
              for f in doc_files(REPO_ROOT)}
    for page in ("README.md", "paper1-cifar10.md", "paper2.md", "birds-cub100.md", "results.md",
                 "reproducibility.md"):
        assert counts[page] >= 3, (page, counts[page])
    assert sum(counts.values()) >= 100, counts
    assert "generated:begin paper-comparison" in _text(DOCS / "results.md")
    verdicts = {str(f.relative_to(REPO_ROOT)): len(VERDICT.findall(_text(f))) for f in doc_files(REPO_ROOT)}
    for page, n in (("README.md", 5), ("docs/paper2.md", 15), ("docs/birds-cub100.md", 10),
                    ("docs/paper1-cifar10.md", 3)):
        assert verdicts[page] >= n, (page, verdicts[page])


# ----------------------------------------------------------------------------- the check can fail
M = {"detectors": {"msp": {"val": {"auroc": 0.844036}},
                   "cfe_recall": {"val": {"auroc": 0.476, "auroc_ci_low": 0.425, "auroc_ci_high": 0.526}}},
     "model": {"accuracy": {"test": 0.8082}, "n": {"test": 450}, "errors": {"test": 51}},
     "cfe": {"table1": {"recall_lt_0.3": {"new_errors": 17}}},
     "debugging": {"difference": {"mean": -0.0004, "p_value": 0.28, "hier_ci_low": -0.0016, "hier_ci_high": 0.0058},
                   "grid": [{"val_accuracy": 0.839}, {"val_accuracy": 0.8388}]}}


@pytest.fixture
def root(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "metrics.json").write_text(json.dumps(M))
    return tmp_path


def test_metric_keys_with_dots_and_list_items():
    assert metric_value(M, "cfe.table1.recall_lt_0.3.new_errors") == 17
    assert metric_value(M, "debugging.grid.1.val_accuracy") == 0.8388
    assert evaluate("model.n.test - model.errors.test", M) == 399
    assert evaluate("(model.accuracy.test)*100", M) == pytest.approx(80.82)
    for bad in ("model.accuracy", "model.nothing", "debugging.grid.7.val_accuracy"):
        with pytest.raises(KeyError):
            evaluate(bad, M)
    for bad in ("__import__('os')", "model.n.test ** 2", "max(model.n.test)"):
        with pytest.raises((KeyError, ValueError)):
            evaluate(bad, M)


def test_statistics_in_annotations():
    """The functions an annotation may call: the comparisons a committed run did not record."""
    assert evaluate("random_p_more(45, 178, 100, 25 + 45)", M) == pytest.approx(0.0544, abs=1e-4)
    assert evaluate("random_p_fewer(97, 992, 539, 97 + 104)", M) == pytest.approx(0.0318, abs=1e-4)
    assert evaluate("sign_test_p(28, 17)", M) == pytest.approx(0.1352, abs=1e-4)
    assert evaluate("mde_low(0.002015, 6)*100", M) == pytest.approx(0.1258, abs=1e-4)
    assert evaluate("max(model.n.test, 3) - min(1, 2)", M) == 449
    for bad in ("open(1)", "max(x=1)", "model.n.test(2)"):
        with pytest.raises((KeyError, ValueError)):
            evaluate(bad, M)


def test_printed_precision():
    assert printed_matches("0.844", 0.844036) and printed_matches("0.84", 0.844036)
    assert not printed_matches("0.845", 0.844036) and not printed_matches("0.8441", 0.844036)
    assert printed_matches("3,886", 3886) and printed_matches("85.4", 85.35)  # a tie either way
    assert printed_matches("\u22120.04", -0.04) and not printed_matches("0.04", -0.04)


def test_correct_annotations_pass(root):
    text = ("MSP 0.844<!-- m:p:detectors.msp.val.auroc --> (0.84<!-- m:p:detectors.msp.val.auroc -->), "
            "80.8<!-- m:p:model.accuracy.test*100 --> %, 399<!-- m:p:model.n.test-model.errors.test --> correct, "
            "**-0.04<!-- m:p:debugging.difference.mean*100 --> pt**, "
            "0.8390<!-- m:p:debugging.grid.0.val_accuracy -->-0.8388<!-- m:p:debugging.grid.1.val_accuracy -->")
    assert number_problems(text, root) == []


@pytest.mark.parametrize("text, why", [
    ("MSP 0.845<!-- m:p:detectors.msp.val.auroc -->", "the committed metrics give 0.844036"),  # wrong last digit
    ("81.8<!-- m:p:model.accuracy.test*100 --> %", "printed 81.8"),                           # a stale percentage
    ("a gain of 0.04<!-- m:p:debugging.difference.mean*100 --> pt", "printed 0.04"),          # the sign dropped
    ("52<!-- m:p:model.errors.test --> test errors", "printed 52"),                           # a count
    ("MSP <!-- m:p:detectors.msp.val.auroc -->", "no number right before"),                   # orphan annotation
    ("0.844 <!-- m:p:detectors.msp.val.auroc -->", "no number right before"),                 # not right before
    ("0.844<!-- m:p:detectors.msp.test.auroc -->", "KeyError"),                               # unknown key
    ("0.844<!-- m:q:detectors.msp.val.auroc -->", "no committed metrics for profile 'q'"),     # unknown profile
    ("1<!-- m:p:model.n.test ** 2 -->", "cannot read"),                                       # not an expression
])
def test_wrong_numbers_are_caught(root, text, why):
    problems = number_problems(text, root, "page.md")
    assert len(problems) == 1 and why in problems[0] and problems[0].startswith("page.md:1:"), problems


# ----------------------------------------------------------------------------- verdicts
CHANCE = "inside(0.5, detectors.cfe_recall.val.auroc_ci_low, detectors.cfe_recall.val.auroc_ci_high)"
HIER = "debugging.difference.hier_ci_low, debugging.difference.hier_ci_high"


def test_correct_verdicts_pass(root):
    text = ("1 - recall ranks errors at chance (0.476<!-- m:p:detectors.cfe_recall.val.auroc -->)"
            f"<!-- v:p:{CHANCE} -->; the difference is not\n  significant"
            "<!-- v:p:not_significant(debugging.difference.p_value) -->, its "
            f"interval including 0<!-- v:p:inside(0, {HIER}) --><!-- v:p,p:inside(0.001, {HIER}) --> and excluding"
            f"<!-- v:p:outside(0.01, {HIER}) --> a gain of 1 pt; MSP beats it<!-- v:p:greater(detectors.msp.val.auroc, "
            "detectors.cfe_recall.val.auroc_ci_high) -->, and 28 wins against 17 losses are more, not significantly"
            "<!-- v:p:not_significant(sign_test_p(28, 17)) -->")
    assert verdict_problems(text, root) == []
    assert number_problems(text, root) == []


@pytest.mark.parametrize("text, why", [
    (f"ranks errors below chance<!-- v:p:{CHANCE} -->", "the prose says 'below chance' (less), the annotation checks "
                                                      "inside"),                              # flipped words
    ("not significant<!-- v:p:significant(debugging.difference.p_value) -->", "the prose says 'not significant'"),
    ("significant<!-- v:p:significant(debugging.difference.p_value) -->", "does not hold"),   # a false claim
    (f"it excludes the paper's +0.44 pt<!-- v:p:outside(0.0044, {HIER}) -->", "0.0044 outside [-0.0016, 0.0058]"),
    (f"the result<!-- v:p:{CHANCE} -->", "no verdict words right before"),                   # an orphan verdict
    (f"at chance<!-- v:q:{CHANCE} -->", "no committed metrics for profile 'q'"),             # unknown profile
    (f"at chance<!-- v:p,q:{CHANCE} -->", "no committed metrics for profile 'q'"),           # ... in a list
    ("at chance<!-- v:p:chance(0.5) -->", "a verdict is one of"),                            # unknown kind
    ("at chance<!-- v:p:inside(0.5, 0.4) -->", "inside takes 3 values, got 2"),              # wrong arity
    ("at chance<!-- v:p:inside(0.5, detectors.cfe_recall.test.auroc, 1) -->", "KeyError"),   # unknown key
])
def test_wrong_verdicts_are_caught(root, text, why):
    problems = verdict_problems(text, root, "page.md")
    assert len(problems) == 1 and why in problems[0] and problems[0].startswith("page.md:1:"), problems


def test_another_profiles_metrics_by_profile_at_key(root):
    """``PROFILE@key``: a sentence that compares two runs (a variant and its base) is checked against both."""
    (root / "q").mkdir()
    (root / "q" / "metrics.json").write_text(json.dumps({"detectors": {"msp": {"val": {"auroc": 0.9}}}}))
    ok = ("0.056<!-- m:q:detectors.msp.val.auroc - p@detectors.msp.val.auroc -->; MSP is higher on q"
          "<!-- v:q:greater(detectors.msp.val.auroc, p@detectors.msp.val.auroc) -->")
    assert number_problems(ok, root) == [] and verdict_problems(ok, root) == []
    flipped = ok.replace("higher on q<!-- v:q:greater", "higher on q<!-- v:q:less")
    assert len(verdict_problems(flipped, root)) == 1
    assert "no committed metrics for profile 'r'" in number_problems("1<!-- m:q:r@model.n.test -->", root)[0]
    assert evaluate("p@model.n.test", {}, {"p": M}) == 450


#: for each verdict KIND, words that state another one: what a flipped verdict reads like
FLIPPED = {"inside": "outside", "outside": "inside", "greater": "below", "less": "above", "at_most": "beats",
           "overlap": "outside", "significant": "not significant", "not_significant": "significant"}


@pytest.mark.parametrize("page", ["README.md", "docs/paper2.md", "docs/birds-cub100.md", "docs/paper1-cifar10.md"])
def test_a_flipped_verdict_on_a_real_page_is_caught(page):
    """Replace the words of each verdict of a real page by words of another verdict: each is caught (with
    the annotations that share its words), and nothing else is."""
    text = _text(REPO_ROOT / page)
    assert verdict_problems(text, REFERENCE_DIR, page) == []
    assert set(FLIPPED) == set(VERDICTS)
    prev_end, flipped = 0, 0
    for mo in VERDICT.finditer(text):
        before = text[prev_end:mo.start()]
        words = verdict_words(before)
        prev_end = mo.end()
        if words is None:  # an annotation that shares the words of the one before it
            continue
        hit = list(re.finditer(r"\s+".join(map(re.escape, words[0].split())), before, re.I))[-1]
        start = mo.start() - len(before) + hit.start()
        bad = text[:start] + FLIPPED[words[1]] + text[start + len(hit.group(0)):]
        problems = verdict_problems(bad, REFERENCE_DIR, page)
        assert problems and all("the prose says" in p for p in problems), (words, problems)
        assert any(mo.group(0) in p for p in problems), (words, problems)
        flipped += 1
    assert flipped >= 3


def test_a_moved_reference_names_the_stale_verdicts(tmp_path):
    """New numbers that turn a verdict: cub100's 1 - recall below chance, its debugging p-value at 0.01."""
    shutil.copytree(REFERENCE_DIR, tmp_path / "reference")
    f = tmp_path / "reference" / "cub100" / "metrics.json"
    m = json.loads(f.read_text())
    m["detectors"]["cfe_recall"]["val"]["auroc_ci_high"] = 0.49
    m["debugging"]["difference"]["p_value"] = 0.01
    f.write_text(json.dumps(m))
    problems = [p for p in docs_problems(REPO_ROOT, tmp_path / "reference") if "<!-- v:" in p]
    birds = [p for p in problems if p.startswith("docs/birds-cub100.md:")]
    assert any("'at chance' does not hold" in p and "0.5 inside [0.4254, 0.49] is false" in p for p in birds)
    assert any("'not significant' does not hold" in p and "p = 0.01 >= 0.05 is false" in p for p in birds)
    # and nowhere else but in the examples of docs/README.md, which are checked too
    assert all(p.startswith(("docs/birds-cub100.md:", "docs/README.md:")) for p in problems), problems


def test_a_wrong_number_on_a_real_page_is_caught():
    """Change the last digit of each of the first annotated numbers of a real page: each is caught."""
    text = _text(DOCS / "birds-cub100.md")
    matches = [mo for mo in ANNOTATION.finditer(text) if mo["num"]][:10]
    assert len(matches) == 10
    for mo in matches:
        num = mo["num"]
        wrong = num[:-1] + str((int(num[-1]) + 5) % 10)
        bad = text[:mo.start("num")] + wrong + text[mo.end("num"):]
        problems = number_problems(bad, REFERENCE_DIR, "birds-cub100.md")
        assert len(problems) == 1 and f"printed {wrong}," in problems[0], (num, wrong, problems)


def test_a_hand_edited_generated_block_is_caught():
    text = _text(DOCS / "results.md")
    mo = GENERATED.search(text)
    body = mo["body"]
    edited = re.sub(r"0\.\d{3}", lambda m: "0.999" if m.group(0) != "0.999" else "0.998", body, count=1)
    assert edited != body
    bad = text[:mo.start("body")] + edited + text[mo.end("body"):]
    assert generated_problems(text, REFERENCE_DIR) == []
    problems = generated_problems(bad, REFERENCE_DIR, "results.md")
    assert len(problems) == 1 and "paper-comparison" in problems[0]
    with pytest.raises(ValueError, match="unknown"):
        from helpers.tools.report import render_generated
        render_generated("<!-- generated:begin nosuchtable -->\nx\n<!-- generated:end -->")


def test_a_moved_reference_names_the_stale_prose(tmp_path):
    """What `make reference` would do: the reference moves, and every prose number quoting it is named."""
    shutil.copytree(REFERENCE_DIR, tmp_path / "reference")
    f = tmp_path / "reference" / "cub100" / "metrics.json"
    m = json.loads(f.read_text())
    m["detectors"]["msp"]["val"]["auroc"] = 0.9
    f.write_text(json.dumps(m))
    problems = docs_problems(REPO_ROOT, tmp_path / "reference")
    stale = [p for p in problems if "m:cub100:detectors.msp.val.auroc -->" in p]
    assert stale and all("the committed metrics give 0.9" in p for p in stale), problems
    assert any(p.startswith("docs/birds-cub100.md:") for p in stale)
    assert any("generated block" in p for p in problems)  # and the tables that show it


# ----------------------------------------------------------------------------- links
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", _text(path), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", doc_files(REPO_ROOT), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", _text(page), flags=re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if dest in PENDING:
            continue
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, bad


def test_readme_is_a_landing_page():
    text = _text(REPO_ROOT / "README.md")
    assert len(text.encode()) < 15_000
    for must in ("make figures", "make test", "docs/data-and-weights.md", "docs/gpu.md", "## Contents"):
        assert must in text


# ----------------------------------------------------------------------------- docs/tools
def test_cub100_from_official_release(tmp_path):
    """docs/tools/cub100_from_official.py on a tiny official-format tree: the 100 species kept and
    renumbered in official order, bounding-box crops at 227x227, official flags; the project reads it."""
    from PIL import Image

    sys.path.insert(0, str(DOCS / "tools"))
    try:
        import cub100_from_official as tool
    finally:
        sys.path.pop(0)
    src, out = tmp_path / "CUB_200_2011", tmp_path / "cub100"
    (src / "images").mkdir(parents=True)
    (src / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    imgs, labels, split, boxes = [], [], [], []
    n = 0
    for c in (1, 2, 4):  # official 2 is not one of the 100; official 4 becomes class 2
        d = src / "images" / f"{c:03d}.Bird_{c}"
        d.mkdir()
        for j in range(6):
            n += 1
            a = Image.new("RGB", (60, 40), (0, 0, 255))
            a.paste((255, 0, 0), (10, 5, 30, 25))  # the bird: a red box
            a.save(d / f"Bird_{c}_{j}.jpg", quality=95)
            imgs.append(f"{n} {d.name}/Bird_{c}_{j}.jpg")
            labels.append(f"{n} {c}")
            split.append(f"{n} {1 if j < 4 else 0}")
            boxes.append(f"{n} 10.0 5.0 20.0 20.0")
    for name, lines in (("images.txt", imgs), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        (src / name).write_text("\n".join(lines) + "\n")

    assert tool.build(src, out) == 12
    classes = (out / "classes.txt").read_text().splitlines()
    assert len(classes) == 100 and classes[1] == "2 002.Bird_4"
    rows = [line.split() for line in (out / "images.txt").read_text().splitlines()]
    lab = [int(line.split()[1]) for line in (out / "image_class_labels.txt").read_text().splitlines()]
    assert [r[1].split("/")[0] for r in rows][::6] == ["001.Bird_1", "002.Bird_4"] and sorted(set(lab)) == [1, 2]
    assert [line.split()[1] for line in (out / "train_test_split.txt").read_text().splitlines()][:6] == \
        ["1", "1", "1", "1", "0", "0"]
    with Image.open(out / "images" / rows[0][1]) as im:
        assert im.size == (227, 227)
        r, g, b = im.convert("RGB").resize((1, 1), Image.BILINEAR).getpixel((0, 0))
        assert r > 200 and b < 60  # only the box, red, is left

    from helpers.datasets import load_data
    from helpers.profiles import load_profile
    cfg = load_profile("digits", {"checkpoint": None, "dataset": "cub200", "data_dir": str(out), "image_size": 8,
                                  "normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}, "split.val_fraction": 0.25})
    b = load_data(cfg)
    assert len(b.classes) == 100 and b.classes[1] == "002.Bird_4" and len(b["test"]) == 4
