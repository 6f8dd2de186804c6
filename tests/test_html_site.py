"""`make html`: the executed notebooks, reports and docs as one static site that works offline, built without
executing anything; its link checker."""
import re
import time
from pathlib import Path

import nbformat
import pytest

from helpers.paths import NOTEBOOK_DIR
from helpers.profiles import DEFAULT_PROFILE
from helpers.tools.html_site import (
    Slugger,
    available_profiles,
    build_site,
    check_site,
    github_slug,
    markdown_parser,
    notebook_title,
    strip_markdown_nav,
    tex_to_mathml,
)

HREF = re.compile(r'(?:href|src)="([^"#]+)"')


def _local_links(page: Path) -> list[str]:
    return [h for h in HREF.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", h)]


def test_default_profile_site(tmp_path):
    index = build_site(tmp_path / "site", [DEFAULT_PROFILE])
    links = _local_links(index)
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert len(nbs) == 6
    assert [h for h in links if h.startswith(f"{DEFAULT_PROFILE}/") and h != f"{DEFAULT_PROFILE}/report.html"] == \
        [f"{DEFAULT_PROFILE}/{nb.stem}.html" for nb in nbs]  # paper order
    assert "README.html" in links and "docs/README.html" in links  # one site: the README and the docs index
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
    # one profile only: the pages it links of the others (docs/results.md -> figures/cub100/report.md) are
    # rendered all the same, so that no link of a partial site is dead
    assert not any(check_site(index.parent).values()), check_site(index.parent)


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


# ----------------------------------------------------------------------------------------------------------------
# one site that works offline: anchors, links, images, math, nothing from another host

def _text_outside_code(page: str) -> str:
    """The visible text of a page outside code, preformatted output, formulas, styles and scripts."""
    page = re.sub(r"<(pre|code|math|style|script)\b.*?</\1>", " ", page, flags=re.S | re.I)
    return re.sub(r"<[^>]*>", " ", page)


#: TeX as MathJax would have read it: $...$, $$...$$ or a TeX command
RAW_TEX = re.compile(r"\$\$?[^$\s][^$]*?\$|\\(?:frac|mathrm|sum|int|alpha|theta|lambda|sigma|text)\b")
#: a resource loaded from another host: <script src>, <link href>, <img src>, ... with http(s):// or //
EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source|video|audio|embed)\b[^>]*\b(?:src|href)="
                      r"""["']?(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def full_site(tmp_path_factory):
    """Every profile's notebooks and report, the README and the docs: the site `make html` builds."""
    start = time.perf_counter()
    index = build_site(tmp_path_factory.mktemp("site") / "html")
    print(f"site of {len(available_profiles())} profiles built in {time.perf_counter() - start:.1f} s")
    return index.parent


@pytest.mark.slow  # builds every profile: about 10 s
def test_site_has_no_dead_links(full_site):
    """The link checker: every relative href/src is a file of the site, every #anchor an id on its page,
    every image there, no script, style sheet or image from another host."""
    problems = check_site(full_site)
    assert problems == {"dead links": [], "dead anchors": [], "missing images": [], "external resources": []}
    pages = sorted(full_site.rglob("*.html"))
    assert len(pages) >= 6 * len(available_profiles()) + 10
    for page in pages:  # and independently of check_site's parser
        text = page.read_text(encoding="utf-8")
        assert not EXTERNAL.search(text), page
        assert "cdnjs" not in text and "mathjax" not in text.lower(), page


@pytest.mark.slow  # builds every profile: about 10 s
def test_site_anchors_and_cross_links(full_site):
    """Headings carry GitHub's anchors; Markdown links point to the rendered pages, anchors kept; files that
    are not pages (figures of docs/results.md, folders, sources) are in the site."""
    readme = (full_site / "README.html").read_text(encoding="utf-8")
    for anchor in re.findall(r'href="#([^"]+)"', readme):  # the Contents list
        assert f'id="{anchor}"' in readme, anchor
    assert 'id="two-commands"' in readme and 'href="#two-commands"' in readme
    running = (full_site / "docs" / "running.html").read_text(encoding="utf-8")
    assert 'id="a-browsable-site-make-html"' in running
    assert 'href="data-and-weights.html#cub100"' in (full_site / "docs" / "birds-cub100.html").read_text("utf-8")
    assert 'id="cub100"' in (full_site / "docs" / "data-and-weights.html").read_text(encoding="utf-8")
    results = (full_site / "docs" / "results.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]*src="([^"]+)"', results)
    assert images and all(src.startswith(f"../{DEFAULT_PROFILE}/") for src in images), images
    assert all((full_site / "docs" / src).is_file() for src in images)
    assert ".md" not in "".join(re.findall(r'href="([^"#:]+)', readme + results))
    for page in [full_site / "README.html", *sorted((full_site / "docs").glob("*.html"))]:  # one site
        text = page.read_text(encoding="utf-8")
        up = "../" if page.parent.name == "docs" else ""
        assert f'href="{up}index.html"' in text and f'href="{up}docs/README.html"' in text, page
        assert f'href="{up}docs/glossary.html"' in text, page
        assert text.count("<nav>") == 1 and ">Documentation index<" not in text, page  # one bar, the site's
    index = (full_site / "index.html").read_text(encoding="utf-8")
    assert 'href="README.html"' in index and 'href="docs/README.html"' in index


@pytest.mark.slow  # builds every profile: about 10 s
def test_site_math_is_mathml(full_site):
    """Formulas of the notebooks' Markdown and of the docs are MathML, made at build time: no raw TeX left
    outside code, and the `$` of code untouched."""
    for page in (full_site / DEFAULT_PROFILE / "04_cfe_filters.html", full_site / "docs" / "methods.html"):
        text = page.read_text(encoding="utf-8")
        assert text.count("<math") >= 20, page
        outside = _text_outside_code(text)
        assert "$G_c$" not in outside and not RAW_TEX.search(outside), (page, RAW_TEX.search(outside))
        assert 'class="tex"' not in text  # every formula converted
    assert "<code>$COMPANION_ARTIFACTS</code>" in (full_site / "README.html").read_text(encoding="utf-8")


def test_markdown_cells_math_outputs_untouched(tmp_path):
    """Only the notebooks' Markdown cells get MathML: a `$` in code, in a code span or in an output stays."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# T\n\nThe set $G_c$, the code `$HOME`, and\n\n$$\\frac{a}{b}$$"),
        nbformat.v4.new_code_cell("print('$x$')", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="costs $5 and $6\n"),
            nbformat.v4.new_output("display_data", data={"text/markdown": "output $y$"})])])
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    nbformat.write(nb, nb_dir / "00_t.ipynb")
    index = build_site(tmp_path / "site", None, tmp_path / "figures", nb_dir, "main")
    page = (index.parent / "main" / "00_t.html").read_text(encoding="utf-8")
    assert page.count("<math") == 2 and "<mfrac>" in page and 'display="block"' in page
    assert "$HOME" in page and "costs $5 and $6" in page and "$y$" in page and "$x$" in page
    assert "$G_c$" not in page
    assert not any(check_site(index.parent).values())


def test_markdown_nav_line_gives_way_to_the_sites():
    """A docs page's own link line (for GitHub) before its first section is dropped on the site, whose bar
    replaces it; a line of links further down, or prose with links, stays."""
    page = ("# Title\n\n[Documentation index](README.md) · [README](../README.md) · [Glossary](glossary.md)\n\n"
            "Text with [a](a.md) · [b](b.md) links.\n\n## Section\n\n[x](x.md) · [y](y.md)\n")
    out = strip_markdown_nav(page)
    assert out == ("# Title\n\nText with [a](a.md) · [b](b.md) links.\n\n## Section\n\n[x](x.md) · [y](y.md)\n")
    assert strip_markdown_nav(out) == out
    assert strip_markdown_nav("# T\n\n[one link](a.md)\n") == "# T\n\n[one link](a.md)\n"


def test_github_slugs():
    assert github_slug("A browsable site: make html") == "a-browsable-site-make-html"
    assert github_slug("SqueezeNet 1.1 (ImageNet features, cub100)") == "squeezenet-11-imagenet-features-cub100"
    assert github_slug("1. Conductance (paper 1, eq. 5)") == "1-conductance-paper-1-eq-5"
    assert github_slug("Paper vs. this — companion's run") == "paper-vs-this--companions-run"
    assert github_slug("Über_große Zahlen") == "über_große-zahlen"
    slug = Slugger()
    assert [slug("Tests"), slug("Tests"), slug("tests"), slug("Tests-1")] == ["tests", "tests-1", "tests-2",
                                                                                "tests-1-1"]
    html = markdown_parser()("# A browsable site: `make html`\n\n## Results\n\n## Results\n")
    assert re.findall(r'<h\d id="([^"]+)"', html) == ["a-browsable-site-make-html", "results", "results-1"]


def test_markdown_math():
    html = markdown_parser()("Text $x^2$ and `$HOME` and\n\n```\n$y$\n```\n\n$$\\sum_i a_i$$\n\n"
                             "| a | $b$ |\n|---|---|\n")
    assert html.count("<math") == 3 and "<code>$HOME</code>" in html and "$y$" in html
    assert 'display="block"' in tex_to_mathml(r"\sum_i a_i", display=True)
    arg = tex_to_mathml(r"\arg\min_\theta f")  # latex2mathml does not know \arg
    assert "\\arg" not in arg and '<mi mathvariant="normal">a</mi>' in arg


def test_check_site_finds_problems(tmp_path):
    """The checker itself: each kind of problem is found, and nothing else."""
    (tmp_path / "a.html").write_text('<h2 id="x">X</h2><a href="#x">self</a>')
    (tmp_path / "index.html").write_text(
        '<link rel="stylesheet" href="//cdn.example/x.css"><script src="https://cdn.example/x.js"></script>'
        '<style>@import url("https://fonts.example/f.css");</style>'
        '<a href="a.html#x">ok</a> <a href="a.html#nope">bad anchor</a> <a href="gone.html">gone</a> '
        '<img src="missing.png"> <img src="data:image/png;base64,AAAA"> <a href="https://arxiv.org/abs/1910.00387">'
        'a paper</a> <a href="mailto:x@example.org">mail</a> <a href="#top">top</a><p id="top"></p>')
    assert check_site(tmp_path) == {
        "dead links": ["index.html: gone.html"], "dead anchors": ["index.html: a.html#nope"],
        "missing images": ["index.html: missing.png"],
        "external resources": ["index.html: https://fonts.example/f.css",
                               "index.html: <link href=//cdn.example/x.css>",
                               "index.html: <script src=https://cdn.example/x.js>"]}
