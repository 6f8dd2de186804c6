"""A static, browsable site of every profile's executed notebooks and report (``make html``).

    python -m helpers.tools.html_site                              # every profile -> build/html/index.html
    python -m helpers.tools.html_site --profiles digits cub100 --out /tmp/site

Nothing is executed: nbconvert renders the notebooks as they are on disk (``notebooks/*.ipynb`` for the
default profile, ``figures/<profile>/notebooks/*.ipynb`` for the others) and ``figures/<profile>/report.md``
is rendered with mistune (nbconvert's own Markdown renderer), its figures copied beside it.  The index
lists the notebooks in paper order, the profiles side by side.  A few seconds for all profiles.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import sys
from pathlib import Path

from helpers.paths import FIGURES_DIR, NOTEBOOK_DIR, REPO_ROOT
from helpers.profiles import DEFAULT_PROFILE
from helpers.utils import cli_main

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}.muted{color:#888}nav{margin-bottom:1rem}"""


def notebook_dir(profile: str, figures_root: Path = FIGURES_DIR, notebooks_dir: Path = NOTEBOOK_DIR,
                 default: str = DEFAULT_PROFILE) -> Path:
    """Where a profile's executed notebooks are: notebooks/ for the default profile, else figures/<p>/notebooks/."""
    return notebooks_dir if profile == default else figures_root / profile / "notebooks"


def available_profiles(figures_root: Path = FIGURES_DIR, notebooks_dir: Path = NOTEBOOK_DIR,
                       default: str = DEFAULT_PROFILE) -> list[str]:
    """Profiles with a report or executed notebooks: the default first, then by name."""
    found = {p.name for p in figures_root.iterdir() if p.is_dir() and (
        (p / "report.md").is_file() or any((p / "notebooks").glob(NOTEBOOK_GLOB)))} if figures_root.is_dir() else set()
    if any(notebooks_dir.glob(NOTEBOOK_GLOB)):
        found.add(default)
    return sorted(found, key=lambda p: (p != default, p))


def notebook_title(path: Path) -> str:
    """The first Markdown heading of a notebook ("00 · Data splits and the model under test"), else its name."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            src = "".join(cell.get("source", []))
            mo = re.search(r"^#+\s+(.+)$", src, flags=re.M)
            if mo:
                return mo.group(1).strip()
    return path.stem


def _page(title: str, body: str, nav: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{nav}\n{body}\n</body></html>\n")


def _nav(profile: str, prev: tuple[str, str] | None, nxt: tuple[str, str] | None) -> str:
    parts = ['<a href="../index.html">index</a>', f"profile <code>{html.escape(profile)}</code>",
             '<a href="report.html">report</a>']
    if prev:
        parts.append(f'previous: <a href="{prev[0]}">{html.escape(prev[1])}</a>')
    if nxt:
        parts.append(f'next: <a href="{nxt[0]}">{html.escape(nxt[1])}</a>')
    return "<nav>" + " · ".join(parts) + "</nav>"


#: a relative link to a Markdown page of the repository (README.md, docs/*.md), with its anchor
MD_LINK = re.compile(r'href="((?:\.\./)*(?:docs/)?[\w.-]+)\.md(#[^"]*)?"')


def _html_links(html: str) -> str:
    """Links to the repository's Markdown pages point to their rendered copies (``X.md`` -> ``X.html``)."""
    return MD_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', html)


def render_notebook(src: Path, dest: Path, title: str, nav: str) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_filename(str(src), resources={"metadata": {"name": title}})
    nav_html = f'<div style="font-family:system-ui,sans-serif;padding:.5rem 1rem">{nav}</div>'
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav_html, body, count=1)
    dest.write_text(_html_links(body), encoding="utf-8")


def render_docs(out: Path, root: Path = REPO_ROOT) -> list[Path]:
    """README.md and docs/*.md as HTML at the same relative paths under ``out`` (the notebooks link to
    them); returns the pages written."""
    import mistune

    md = mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])
    pages = []
    for src in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        dest = out / src.relative_to(root).with_suffix(".html")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_page(src.stem, _html_links(md(src.read_text(encoding="utf-8")))), encoding="utf-8")
        pages.append(dest)
    return pages


def render_report(src: Path, dest: Path, profile: str) -> list[str]:
    """report.md as HTML beside its figures (copied); returns the files it links that are missing."""
    import mistune

    text = src.read_text(encoding="utf-8")
    missing = []
    for target in dict.fromkeys(IMAGE.findall(text)):
        if re.match(r"[a-z]+:", target):
            continue
        f = src.parent / target
        if f.is_file():
            (dest.parent / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest.parent / target)
        else:
            missing.append(target)
    body = mistune.create_markdown(escape=False, plugins=["table", "strikethrough"])(text)
    dest.write_text(_page(f"Report: {profile}", body, _nav(profile, None, None)), encoding="utf-8")
    return missing


def _accuracy(figures_root: Path, profile: str) -> str:
    f = figures_root / profile / "metrics.json"
    try:
        acc = json.loads(f.read_text())["model"]["accuracy"]["test"]
        return f"model test accuracy {acc:.3f}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def build_site(out: str | Path = REPO_ROOT / "build" / "html", profiles=None, figures_root: Path = FIGURES_DIR,
               notebooks_dir: Path = NOTEBOOK_DIR, default: str = DEFAULT_PROFILE) -> Path:
    """Render the notebooks and reports of ``profiles`` (all available ones by default) into ``out``;
    returns the index page."""
    out, figures_root, notebooks_dir = Path(out), Path(figures_root), Path(notebooks_dir)
    profiles = list(profiles) if profiles else available_profiles(figures_root, notebooks_dir, default)
    if not profiles:
        raise SystemExit(f"html: no executed notebooks or report.md found in {notebooks_dir} or {figures_root}")
    out.mkdir(parents=True, exist_ok=True)
    pages: dict[str, dict[str, str]] = {}  # notebook stem -> profile -> page
    titles: dict[str, str] = {}
    reports: dict[str, str] = {}
    for prof in profiles:
        nb_dir = notebook_dir(prof, figures_root, notebooks_dir, default)
        nbs = sorted(nb_dir.glob(NOTEBOOK_GLOB)) if nb_dir.is_dir() else []
        report = figures_root / prof / "report.md"
        if not nbs and not report.is_file():
            raise SystemExit(f"html: profile {prof!r} has neither executed notebooks ({nb_dir}) nor {report}")
        pdir = out / prof
        if pdir.exists():
            shutil.rmtree(pdir)
        pdir.mkdir(parents=True)
        named = [(nb, notebook_title(nb)) for nb in nbs]
        for i, (nb, title) in enumerate(named):
            titles.setdefault(nb.stem, title)
            prev = (f"{named[i - 1][0].stem}.html", named[i - 1][1]) if i else None
            nxt = (f"{named[i + 1][0].stem}.html", named[i + 1][1]) if i + 1 < len(named) else None
            render_notebook(nb, pdir / f"{nb.stem}.html", f"{title} ({prof})", _nav(prof, prev, nxt))
            pages.setdefault(nb.stem, {})[prof] = f"{prof}/{nb.stem}.html"
        if report.is_file():
            render_report(report, pdir / "report.html", prof)
            reports[prof] = f"{prof}/report.html"
    render_docs(out)
    index = out / "index.html"
    index.write_text(_index(profiles, pages, titles, reports, figures_root), encoding="utf-8")
    return index


def _index(profiles, pages, titles, reports, figures_root: Path) -> str:
    head = "".join(f"<th><code>{html.escape(p)}</code><br><span class=\"muted\">"
                   f"{html.escape(_accuracy(figures_root, p))}</span></th>" for p in profiles)
    rows = ["<tr><td>report: every table and figure, stage costs</td>" + "".join(
        f'<td><a href="{reports[p]}">report</a></td>' if p in reports else '<td class="muted">no report</td>'
        for p in profiles) + "</tr>"]
    for stem in sorted(pages):  # 00_..05_: paper order
        rows.append(f"<tr><td>{html.escape(titles[stem])}</td>" + "".join(
            f'<td><a href="{pages[stem][p]}">notebook</a></td>' if p in pages[stem]
            else '<td class="muted">not run</td>' for p in profiles) + "</tr>")
    body = ("<h1>Finding the mistakes of image classifiers: executed notebooks and reports</h1>\n"
            "<p>Rendered by <code>make html</code> (<code>python -m helpers.tools.html_site</code>) from the executed "
            "notebooks and <code>figures/&lt;profile&gt;/report.md</code> as they are on disk: the committed runs, "
            "unless a local <code>make figures</code> replaced them.  Nothing was executed to build this page.  "
            "Notebooks 00-03 follow paper 1 (conductance, LCR, the joint classifier), 04-05 paper 2 "
            "(counterfactual filters, model debugging).</p>\n"
            f"<table><tr><th>notebook</th>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n")
    return _page("Executed notebooks and reports", body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / "build" / "html"), help="output folder (default build/html)")
    ap.add_argument("--profiles", nargs="*", help="profiles to render (default: every one with notebooks or a report)")
    a = ap.parse_args(argv)
    index = build_site(a.out, a.profiles)
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
