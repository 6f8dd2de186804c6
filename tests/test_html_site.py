"""`make html`: the executed notebooks and reports as a static site, built without executing anything."""
import re
from pathlib import Path

import nbformat
import pytest

from helpers.paths import NOTEBOOK_DIR
from helpers.profiles import DEFAULT_PROFILE
from helpers.tools.html_site import available_profiles, build_site, notebook_title

HREF = re.compile(r'(?:href|src)="([^"#]+)"')


def _local_links(page: Path) -> list[str]:
    return [h for h in HREF.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", h)]


def test_default_profile_site(tmp_path):
    index = build_site(tmp_path / "site", [DEFAULT_PROFILE])
    links = _local_links(index)
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert len(nbs) == 6
    assert [h for h in links if h != f"{DEFAULT_PROFILE}/report.html"] == \
        [f"{DEFAULT_PROFILE}/{nb.stem}.html" for nb in nbs]  # paper order
    text = index.read_text(encoding="utf-8")
    for nb in nbs:
        assert notebook_title(nb).replace("'", "&#x27;") in text
    for link in links:  # every page the index links exists, and so does every page or figure they link
        page = index.parent / link
        assert page.is_file(), link
        for sub in _local_links(page):
            assert (page.parent / sub).is_file(), (link, sub)
    report = (index.parent / DEFAULT_PROFILE / "report.html").read_text(encoding="utf-8")
    assert "<table>" in report and report.count("<img") >= 10
    conductance = (index.parent / DEFAULT_PROFILE / "01_conductance.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in conductance  # the committed outputs, figures included
    assert 'href="../index.html"' in conductance and 'href="02_lcr.html"' in conductance


def _notebook(path: Path, title: str) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {title}\n\nText."),
                                         nbformat.v4.new_code_cell("1 + 1")])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_profiles_side_by_side(tmp_path):
    """The default profile's notebooks come from notebooks/, the others' from figures/<p>/notebooks/;
    a notebook a profile did not run, or a missing report, is marked, not linked."""
    nb_dir, fig = tmp_path / "notebooks", tmp_path / "figures"
    for stem, title in (("00_data", "00 · Data"), ("01_cond", "01 · Conductance"), ("05_debug", "05 · Debugging")):
        _notebook(nb_dir / f"{stem}.ipynb", title)
    _notebook(fig / "zeta" / "notebooks" / "00_data.ipynb", "00 · Data")
    _notebook(fig / "alpha" / "notebooks" / "01_cond.ipynb", "01 · Conductance")
    (fig / "alpha" / "report.md").write_text("# Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![roc](roc.png)\n")
    (fig / "alpha" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (fig / "empty").mkdir(parents=True)
    assert available_profiles(fig, nb_dir, "main") == ["main", "alpha", "zeta"]
    index = build_site(tmp_path / "site", None, fig, nb_dir, "main")
    text = index.read_text(encoding="utf-8")
    head = re.findall(r"<th><code>([^<]+)</code>", text)
    assert head == ["main", "alpha", "zeta"]
    rows = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", text)
    assert [r[0] for r in rows] == ["report: every table and figure, stage costs", "00 · Data", "01 · Conductance",
                                    "05 · Debugging"]
    cells = {name: re.findall(r"<td[^>]*>(.*?)</td>", rest) for name, rest in rows}
    assert cells["00 · Data"][1] == "not run" and "zeta/00_data.html" in cells["00 · Data"][2]
    assert "no report" in cells["report: every table and figure, stage costs"][0]
    for link in _local_links(index):
        assert (index.parent / link).is_file(), link
    assert (index.parent / "alpha" / "roc.png").is_file()
    assert "<table>" in (index.parent / "alpha" / "report.html").read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match="neither"):
        build_site(tmp_path / "site2", ["empty"], fig, nb_dir, "main")
