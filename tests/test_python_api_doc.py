"""docs/python-api.md: its Python script runs as printed and prints the AUROCs the page shows.

The page's ```python block(s) are executed in a fresh namespace, from the repository root, with a
temporary COMPANION_ARTIFACTS (the script writes nothing; a stray write would land there).  Every
line ``<name> AUROC <value> ...`` it prints must carry a number in [0, 1], the names must be those
of the output the page shows (its ```text block), and each value must be close to the page's: a
page whose script changed without its output is stale.  The script takes about 10 s on one thread.
"""
import contextlib
import io
import math
import re

import pytest
import torch

from helpers.paths import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "python-api.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
TEXT_BLOCK = re.compile(r"^```text\n(.*?)^```", re.S | re.M)
AUROC_LINE = re.compile(r"^(\S.*?)\s+AUROC\s+(\S+)", re.M)
#: the scores the page promises: paper 1's three, paper 2's agreement, the one-pass baselines
EXPECTED = {"conductance detector", "LCR", "joint [LCR, cond.]", "CFE 1 - recall", "CFE 1 - F1",
            "msp", "entropy", "energy", "max_logit", "doctor_alpha"}
#: how far a value may move from the page's (another torch version or CPU instruction set)
TOLERANCE = 0.1  # a retrained model moves AUROCs across CPUs; a stale block moves them further


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _aurocs(text: str) -> dict[str, str]:
    return {name.strip(): value for name, value in AUROC_LINE.findall(text)}


def test_the_page_has_one_script_and_its_output():
    text = _page()
    assert len(PYTHON_BLOCK.findall(text)) == 1, "docs/python-api.md: one ```python block expected"
    shown = TEXT_BLOCK.findall(text)
    assert len(shown) == 1, "docs/python-api.md: one ```text block (the script's output) expected"
    assert set(_aurocs(shown[0])) == EXPECTED


def test_the_script_runs_and_prints_aurocs(tmp_path, monkeypatch):
    text = _page()
    blocks = PYTHON_BLOCK.findall(text)
    assert blocks, "docs/python-api.md has no ```python block"
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("COMPANION_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out):
            for i, code in enumerate(blocks):
                exec(compile(code, f"docs/python-api.md (python block {i + 1})", "exec"), {"__name__": "__main__"})
    finally:
        torch.set_num_threads(threads)
    printed = out.getvalue()
    got = _aurocs(printed)
    assert set(got) == EXPECTED, printed
    for name, value in got.items():
        x = float(value)
        assert math.isfinite(x) and 0.0 <= x <= 1.0, f"{name}: AUROC {value!r} is not a number in [0, 1]"
    shown = _aurocs(TEXT_BLOCK.findall(text)[0])
    stale = {n: (float(shown[n]), float(v)) for n, v in got.items() if abs(float(v) - float(shown[n])) > TOLERANCE}
    assert not stale, f"docs/python-api.md shows other AUROCs than its script prints (page, run): {stale}"


@pytest.mark.parametrize("line, name, value", [
    ("conductance detector  AUROC 0.943  95% CI [0.910, 0.972]", "conductance detector", "0.943"),
    ("msp                   AUROC 0.862  95% CI [0.812, 0.904]", "msp", "0.862"),
    ("test accuracy 0.887 (51 errors of 450)", None, None),
])
def test_auroc_lines_are_read(line, name, value):
    assert _aurocs(line) == ({} if name is None else {name: value})
