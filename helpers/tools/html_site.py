"""A static, browsable site of every profile's executed notebooks and report, and of the docs (``make html``).

    python -m helpers.tools.html_site                              # every profile -> build/html/index.html
    python -m helpers.tools.html_site --profiles digits cub100 --out /tmp/site

Nothing is executed: nbconvert renders the notebooks as they are on disk (``notebooks/*.ipynb`` for the
default profile, ``figures/<profile>/notebooks/*.ipynb`` for the others) and mistune (nbconvert's own
Markdown renderer) renders ``figures/<profile>/report.md``, README.md and docs/*.md.  The index lists the
notebooks in paper order, the profiles side by side, and links the README and the docs index.

The site is one site and works offline (``file://``):

- every heading of a Markdown page carries GitHub's anchor id (``github_slug``), so the README's contents
  and links such as ``data-and-weights.md#cub100`` resolve;
- every relative link or image is resolved against the repository and rewritten to where its target is in
  the site: a Markdown file to its rendered page (anchor kept; a linked ``.md`` that is not one of the
  pages above, e.g. ``figures/cub100/cfe_gc_sources.md``, is rendered too), a notebook to its page, any
  other file (figures, ``LICENSE``, ``helpers/__init__.py``) copied at its place, a folder to a listing;
  ``figures/<profile>/X`` is at ``<profile>/X``, beside that profile's notebook pages and report;
- ``$...$`` and ``$$...$$`` in Markdown (docs and the notebooks' Markdown cells, never code or outputs)
  become MathML at build time (latex2mathml), which browsers render natively: no MathJax, and no
  script, style sheet or font from another host (nbconvert's CDN scripts are left out of its template).

``check_site`` is the link checker (``tests/test_html_site.py`` runs it on a full build): every relative
``href``/``src`` resolves to a file, every ``#anchor`` to an id on its page, nothing is loaded from
another host.  A build of the four committed profiles takes 10-20 s.
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import os
import posixpath
import re
import shutil
import sys
import unicodedata
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

from helpers.paths import FIGURES_DIR, NOTEBOOK_DIR, REPO_ROOT
from helpers.profiles import DEFAULT_PROFILE
from helpers.utils import cli_main

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
#: a URL with a scheme (``https:``, ``mailto:``, ``data:``) or protocol-relative (``//host``): not a site file
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
#: ``href="..."`` / ``src="..."`` attributes of generated HTML (values are HTML-escaped)
LINK_ATTR = re.compile(r"""(\b(?:href|src)=)(["'])(.*?)\2""", re.S)
#: a script or style sheet from another host (what nbconvert's templates add); removed from every page
EXTERNAL_TAG = re.compile(r"""<script\b[^>]*\bsrc=["']?(?:https?:)?//[^>]*>\s*</script>\s*"""
                          r"""|<link\b[^>]*\bhref=["']?(?:https?:)?//[^>]*>\s*""", re.I)
#: a copied file larger than this is left out (a link to it is reported as dead)
MAX_COPY_BYTES = 100 * 2**20

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:72rem;margin:2rem auto;
padding:0 1rem;line-height:1.45;color:#222}table{border-collapse:collapse;margin:1rem 0;font-size:.9rem;
display:block;width:max-content;max-width:100%;overflow:auto}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}th{background:#f3f3f3}
img{max-width:100%}code{background:#f3f3f3;padding:0 .2rem}pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}
pre code{background:none;padding:0}.muted{color:#888}nav{margin-bottom:1rem}
math{font-family:"STIX Two Math","Cambria Math","Latin Modern Math","DejaVu Math TeX Gyre",math}
math[display=block]{margin:.8rem 0;overflow-x:auto;overflow-y:hidden}"""

#: nbconvert's lab template without the scripts it loads from a CDN (require.js, MathJax, mermaid, widgets):
#: the math is MathML already, and the committed notebooks have neither widgets nor mermaid diagrams
OFFLINE_TEMPLATE = "companion_offline.html.j2"
OFFLINE_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block notebook_css -%}{{ super() }}<style type="text/css">
math{font-family:"STIX Two Math","Cambria Math","Latin Modern Math","DejaVu Math TeX Gyre",math}
math[display=block]{margin:.8em 0;overflow-x:auto;overflow-y:hidden}
</style>{%- endblock notebook_css -%}
"""


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


def markdown_title(text: str, fallback: str) -> str:
    """The first heading of a Markdown text, as plain text, else ``fallback``."""
    mo = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)
    return re.sub(r"[`*_]", "", mo.group(1)).strip() if mo else fallback


# --------------------------------------------------------------------------------------------------------------
# headings: GitHub's anchors

def html_text(fragment: str) -> str:
    """The text of an HTML fragment (tags and comments dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]*>", "", re.sub(r"<!--.*?-->", "", fragment, flags=re.S)))


def github_slug(text: str) -> str:
    """GitHub's anchor of a heading (github-slugger): lowercase; everything but letters, marks, digits,
    connector punctuation, spaces and hyphens removed; each space a hyphen.  ``A browsable site: `make html```
    -> ``a-browsable-site-make-html``."""
    kept = (c for c in text.lower() if c in " -" or unicodedata.category(c)[0] in "LMN"
            or unicodedata.category(c) == "Pc")
    return "".join(kept).replace(" ", "-")


class Slugger:
    """GitHub's anchors of one page: a repeated heading gets ``-1``, ``-2``, ... (as github-slugger)."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def __call__(self, text: str) -> str:
        base = slug = github_slug(text)
        while slug in self.seen:
            self.seen[base] += 1
            slug = f"{base}-{self.seen[base]}"
        self.seen[slug] = 0
        return slug


# --------------------------------------------------------------------------------------------------------------
# math: TeX -> MathML at build time

#: TeX that latex2mathml does not know, as TeX it does
TEX_REWRITES = ((re.compile(r"\\arg(?![a-zA-Z])"), r"\\mathrm{arg}\\,"),)
#: ``|`` and ``\|`` (absolute values, norms, cardinalities): TeX spaces them as ordinary symbols, not as
#: the infix operators a browser takes them for in the middle of a formula
BAR_MO = re.compile(r"<mo((?:(?!lspace)[^>])*)>(&#x0007C;|&#x02016;|\|)</mo>")

#: ``x'``: a prime is a raised glyph already; as a superscript it would be raised and shrunk twice
PRIME_SUP = re.compile(r"<msup>(<mi[^>]*>[^<]*</mi>)(?:<mrow>)?<mi>(&#x0203[234];)</mi>(?:</mrow>)?</msup>")


@functools.lru_cache(maxsize=4096)
def tex_to_mathml(tex: str, display: bool = False) -> str:
    """MathML of a TeX formula (``display``: a block); a formula latex2mathml cannot read stays TeX, as code."""
    from latex2mathml.converter import convert

    tex = tex.strip()
    for pattern, repl in TEX_REWRITES:
        tex = pattern.sub(repl, tex)
    try:
        mathml = convert(tex, display="block" if display else "inline")
    except Exception:  # any TeX it does not know: show the source rather than fail the build
        return f'<code class="tex">{html.escape(tex)}</code>'
    mathml = PRIME_SUP.sub(r'<mrow>\1<mo lspace="0em" rspace="0em">\2</mo></mrow>', mathml)
    return BAR_MO.sub(r'<mo\1 lspace="0em" rspace="0em">\2</mo>', mathml)


def markdown_parser(slugger: Slugger | None = None):
    """mistune with tables, strikethrough and ``$``/``$$`` math (MathML); headings carry GitHub's anchors."""
    import mistune

    slug = slugger or Slugger()

    class Renderer(mistune.HTMLRenderer):
        def heading(self, text, level, **attrs):
            return f'<h{level} id="{html.escape(slug(html_text(text)))}">{text}</h{level}>\n'

        def block_math(self, text):
            return tex_to_mathml(text, display=True) + "\n"

        def inline_math(self, text):
            return tex_to_mathml(text)

    return mistune.create_markdown(renderer=Renderer(escape=False),
                                   plugins=["table", "strikethrough", "math", "mistune.plugins.math.math_in_list",
                                            "mistune.plugins.math.math_in_quote"])


@functools.lru_cache(maxsize=1)
def _exporter():
    """nbconvert's HTMLExporter (lab template, without its CDN scripts) that writes the math of Markdown cells
    as MathML; Markdown outputs are rendered as nbconvert does (their ``$`` untouched)."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body):
            return tex_to_mathml(body, display=True)

        def inline_math(self, body):
            return tex_to_mathml(body)

        def latex_environment(self, name, body):
            return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

    class OfflineExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            cell = context.get("cell", {})
            if cell.get("cell_type") != "markdown":
                return super().markdown2html(context, source)
            renderer = MathMLRenderer(
                escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return OfflineExporter(template_name="lab", template_file=OFFLINE_TEMPLATE,
                           extra_loaders=[DictLoader({OFFLINE_TEMPLATE: OFFLINE_TEMPLATE_SOURCE})])


# --------------------------------------------------------------------------------------------------------------
# pages

def _page(title: str, body: str, nav: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\"><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body>\n{nav}\n{body}\n</body></html>\n")


def _up(page: str) -> str:
    """The way from a page (site path) back to the site's root: ``""``, ``"../"``, ..."""
    return "../" * page.count("/")


def _nav(profile: str, prev: tuple[str, str] | None, nxt: tuple[str, str] | None, report: bool = True) -> str:
    parts = ['<a href="../index.html">index</a>', '<a href="../README.html">README</a>',
             '<a href="../docs/README.html">docs</a>', f"profile <code>{html.escape(profile)}</code>"]
    if report:
        parts.append('<a href="report.html">report</a>')
    if prev:
        parts.append(f'previous: <a href="{prev[0]}">{html.escape(prev[1])}</a>')
    if nxt:
        parts.append(f'next: <a href="{nxt[0]}">{html.escape(nxt[1])}</a>')
    return "<nav>" + " · ".join(parts) + "</nav>"


def _docs_nav(page: str, glossary: bool = False) -> str:
    up = _up(page)
    extra = f' · <a href="{up}docs/glossary.html">glossary</a>' if glossary else ""
    return (f'<nav><a href="{up}index.html">site index</a> · <a href="{up}README.html">README</a> · '
            f'<a href="{up}docs/README.html">documentation</a>{extra}</nav>')


#: a Markdown page's own navigation line before its first section (links joined by " · ", e.g.
#: ``[Documentation index](README.md) · [README](../README.md)``): for readers on GitHub
MARKDOWN_NAV = re.compile(r"^\[[^\]\n]+\]\([^)\s]+\)(?: · \[[^\]\n]+\]\([^)\s]+\))+[ \t]*\n", re.M)


def strip_markdown_nav(text: str) -> str:
    """``text`` without its navigation line (:data:`MARKDOWN_NAV`) if one comes before its first section
    heading: on the site the page's own bar replaces it, so a page shows one."""
    mo = MARKDOWN_NAV.search(text)
    first_section = re.search(r"^#{2,6}\s", text, flags=re.M)
    if mo is None or (first_section is not None and first_section.start() < mo.start()):
        return text
    return text[:mo.start()] + text[mo.end():].lstrip("\n")


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


class Site:
    """The pages of a site under ``out`` and where every repository file is in it.

    ``pages`` maps a source (a notebook, a Markdown file, a folder, a copied file) to its site path (posix,
    relative to ``out``).  ``target`` returns the site path of any repository file a page links, copying it
    into the site or queueing a page for it on first use; ``rewrite`` turns the relative links of a rendered
    page, written against the page's place in the repository, into links inside the site."""

    def __init__(self, out: Path, root: Path = REPO_ROOT, figures_root: Path = FIGURES_DIR,
                 notebooks_dir: Path = NOTEBOOK_DIR, default: str = DEFAULT_PROFILE):
        self.out, self.root = Path(out).resolve(), Path(root).resolve()
        self.figures_root, self.notebooks_dir = Path(figures_root).resolve(), Path(notebooks_dir).resolve()
        self.default = default
        self.pages: dict[Path, str] = {}
        self.pending: deque[tuple[Path, str]] = deque()  # Markdown files and folders linked, not yet rendered
        self.dead: list[str] = []  # "page: link" of links whose target is not in the repository

    def site_path(self, src: Path) -> str | None:
        """Where a repository file belongs in the site: ``notebooks/X`` of the default profile and
        ``figures/<profile>/X`` at ``<profile>/X``, anything else of the repository at its own path."""
        if _is_under(src, self.notebooks_dir) and src != self.notebooks_dir:
            return f"{self.default}/{src.relative_to(self.notebooks_dir).as_posix()}"
        if self.profile_of(src):
            return src.relative_to(self.figures_root).as_posix()
        if _is_under(src, self.root) and src != self.root:
            return src.relative_to(self.root).as_posix()
        return None

    def target(self, src: Path) -> str | None:
        """The site path of a repository file or folder, put into the site on first use (copied; a Markdown
        file or a folder queued to be rendered); None if it does not exist or is outside the repository."""
        if src in self.pages:
            return self.pages[src]
        rel = self.site_path(src)
        if rel is None or not src.exists() or _is_under(src, self.out):
            return None
        if src.is_dir():
            self.pages[src] = page = rel.rstrip("/") + "/index.html"
            self.pending.append((src, page))
        elif src.suffix.lower() == ".md":
            self.pages[src] = page = rel[:-3] + ".html"
            self.pending.append((src, page))
        else:
            if src.stat().st_size > MAX_COPY_BYTES:
                return None
            dest = self.out / rel
            if not dest.is_file() or dest.stat().st_size != src.stat().st_size or \
                    dest.stat().st_mtime < src.stat().st_mtime:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
            self.pages[src] = page = rel
        return page

    def rewrite(self, body: str, base: Path, page: str) -> str:
        """``body`` (HTML of ``page``) with its relative links, written against the folder ``base`` of the
        repository, pointing inside the site."""
        here = posixpath.dirname(page)

        def sub(mo: re.Match) -> str:
            url = html.unescape(mo.group(3))
            if not url or url.startswith(("#", "/")) or SCHEME.match(url):
                return mo.group(0)
            path, hash_, frag = url.partition("#")
            path = path.split("?", 1)[0]
            found = self.target((base / unquote(path)).resolve())
            if found is None:
                self.dead.append(f"{page}: {url}")
                return mo.group(0)
            new = posixpath.relpath(found, here or ".")
            return f"{mo.group(1)}{mo.group(2)}{html.escape(quote(new) + hash_ + frag)}{mo.group(2)}"

        return LINK_ATTR.sub(sub, body)

    def write(self, page: str, text: str) -> Path:
        dest = self.out / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(EXTERNAL_TAG.sub("", text), encoding="utf-8")
        return dest

    def profile_of(self, src: Path) -> str | None:
        """The profile a repository file belongs to (``figures/<profile>/...``), if any."""
        if _is_under(src, self.figures_root) and len(parts := src.relative_to(self.figures_root).parts) > 1:
            return parts[0]
        return None

    # ----------------------------------------------------------------------------------------------------------

    def docs_nav(self, page: str) -> str:
        """The bar of a page outside the profiles' folders (the glossary linked when there is one)."""
        return _docs_nav(page, glossary=(self.root / "docs" / "glossary.md").is_file())

    def render_notebook(self, src: Path, page: str, title: str, nav: str) -> None:
        """One executed notebook; its links were written for notebooks/ (where every profile's copy started)."""
        body, _ = _exporter().from_filename(str(src), resources={"metadata": {"name": title}})
        body = self.rewrite(body, self.notebooks_dir, page)
        nav_html = (f'<div style="font-family:system-ui,sans-serif;padding:.5rem 1rem">{nav}</div>'
                    "<style>nav a{color:#0645ad;text-decoration:underline}</style>")
        self.write(page, re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav_html, body, count=1))

    def render_markdown(self, src: Path, page: str, title: str | None = None, nav: str | None = None) -> None:
        """A Markdown file (GitHub's anchors, MathML), its links and images resolved into the site."""
        text = src.read_text(encoding="utf-8")
        profile = self.profile_of(src)
        if title is None:
            title = markdown_title(text, src.stem)
            if profile and src.name == "report.md":
                title = f"Report: {profile}"
        if nav is None and profile and page.count("/") == 1:  # beside the profile's notebooks and report
            report = self.figures_root / profile / "report.md"
            nav = _nav(profile, None, None, report.is_file() and self.target(report.resolve()) is not None)
        if nav is None:
            nav = self.docs_nav(page)
            text = strip_markdown_nav(text)
        body = markdown_parser()(text)
        if not re.search(r"^#{1,6}\s", text, flags=re.M):  # a generated table: say what file it is
            shown = src.relative_to(self.root).as_posix() if _is_under(src, self.root) else src.name
            body = f'<p class="muted"><code>{html.escape(shown)}</code></p>\n' + body
        body = self.rewrite(body, src.parent, page)
        self.write(page, _page(title, body, nav))

    def render_folder(self, src: Path, page: str) -> None:
        """A folder a page links (``docs/tools/``): its files (copied), its subfolders by name."""
        items = []
        for f in sorted(src.iterdir()):
            if f.name.startswith((".", "__")):
                continue
            if f.is_file():
                items.append(f'<li><a href="{html.escape(quote(f.name))}"><code>{html.escape(f.name)}</code></a></li>')
            else:
                items.append(f"<li><code>{html.escape(f.name)}/</code></li>")
        rel = (src.relative_to(self.root).as_posix() + "/") if _is_under(src, self.root) else src.name + "/"
        body = f"<h1><code>{html.escape(rel)}</code></h1>\n<ul>\n" + "\n".join(items) + "\n</ul>\n"
        self.write(page, _page(rel, self.rewrite(body, src, page), self.docs_nav(page)))

    def flush(self) -> None:
        """Render every Markdown file and folder linked so far (and what they link, in turn)."""
        while self.pending:
            src, page = self.pending.popleft()
            if src.is_dir():
                self.render_folder(src, page)
            else:
                self.render_markdown(src, page)


def doc_sources(root: Path = REPO_ROOT) -> list[Path]:
    """README.md and docs/*.md: rendered at the same relative paths (the notebooks link to them)."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def render_docs(site: Site, root: Path = REPO_ROOT) -> list[Path]:
    """README.md and docs/*.md as HTML at the same relative paths under the site; returns the pages written
    (their pages must be registered in ``site.pages`` already, as ``build_site`` does)."""
    written = []
    for src in doc_sources(root):
        page = site.pages.setdefault(src.resolve(), src.relative_to(root).with_suffix(".html").as_posix())
        site.render_markdown(src.resolve(), page)
        written.append(site.out / page)
    return written


def _accuracy(figures_root: Path, profile: str) -> str:
    f = figures_root / profile / "metrics.json"
    try:
        acc = json.loads(f.read_text())["model"]["accuracy"]["test"]
        return f"model test accuracy {acc:.3f}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def build_site(out: str | Path = REPO_ROOT / "build" / "html", profiles=None, figures_root: Path = FIGURES_DIR,
               notebooks_dir: Path = NOTEBOOK_DIR, default: str = DEFAULT_PROFILE) -> Path:
    """Render the notebooks and reports of ``profiles`` (all available ones by default), the README and the
    docs into ``out``; returns the index page."""
    out, figures_root, notebooks_dir = Path(out), Path(figures_root), Path(notebooks_dir)
    profiles = list(profiles) if profiles else available_profiles(figures_root, notebooks_dir, default)
    if not profiles:
        raise SystemExit(f"html: no executed notebooks or report.md found in {notebooks_dir} or {figures_root}")
    plan = []
    for prof in profiles:
        nb_dir = notebook_dir(prof, figures_root, notebooks_dir, default)
        nbs = sorted(nb_dir.glob(NOTEBOOK_GLOB)) if nb_dir.is_dir() else []
        report = figures_root / prof / "report.md"
        if not nbs and not report.is_file():
            raise SystemExit(f"html: profile {prof!r} has neither executed notebooks ({nb_dir}) nor {report}")
        plan.append((prof, [(nb, notebook_title(nb)) for nb in nbs], report if report.is_file() else None))
    out.mkdir(parents=True, exist_ok=True)
    site = Site(out, REPO_ROOT, figures_root, notebooks_dir, default)
    for prof, _, _ in plan:  # before anything is written: a page may copy a figure into another profile's folder
        if (out / prof).exists():
            shutil.rmtree(out / prof)
    # every page's place first, so that links between them resolve whatever the order they are written in
    for prof, named, report in plan:
        for nb, _ in named:
            site.pages[nb.resolve()] = f"{prof}/{nb.stem}.html"
        if report:
            site.pages[report.resolve()] = f"{prof}/report.html"
    for src in doc_sources():
        site.pages[src.resolve()] = src.relative_to(REPO_ROOT).with_suffix(".html").as_posix()

    pages: dict[str, dict[str, str]] = {}  # notebook stem -> profile -> page
    titles: dict[str, str] = {}
    reports: dict[str, str] = {}
    for prof, named, report in plan:
        for i, (nb, title) in enumerate(named):
            titles.setdefault(nb.stem, title)
            prev = (f"{named[i - 1][0].stem}.html", named[i - 1][1]) if i else None
            nxt = (f"{named[i + 1][0].stem}.html", named[i + 1][1]) if i + 1 < len(named) else None
            site.render_notebook(nb.resolve(), f"{prof}/{nb.stem}.html", f"{title} ({prof})",
                                 _nav(prof, prev, nxt, report is not None))
            pages.setdefault(nb.stem, {})[prof] = f"{prof}/{nb.stem}.html"
        if report:
            site.render_markdown(report.resolve(), f"{prof}/report.html", f"Report: {prof}", _nav(prof, None, None))
            reports[prof] = f"{prof}/report.html"
    render_docs(site)
    site.flush()
    for dead in site.dead:
        print(f"html: dead link {dead}", file=sys.stderr)
    index = out / "index.html"
    docs_links = [(p, name) for p, name in (("README.html", "README"), ("docs/README.html", "documentation index"))
                  if (out / p).is_file()]
    index.write_text(_index(profiles, pages, titles, reports, figures_root, docs_links), encoding="utf-8")
    return index


def _index(profiles, pages, titles, reports, figures_root: Path, docs_links=()) -> str:
    head = "".join(f"<th><code>{html.escape(p)}</code><br><span class=\"muted\">"
                   f"{html.escape(_accuracy(figures_root, p))}</span></th>" for p in profiles)
    rows = ["<tr><td>report: every table and figure, stage costs</td>" + "".join(
        f'<td><a href="{reports[p]}">report</a></td>' if p in reports else '<td class="muted">no report</td>'
        for p in profiles) + "</tr>"]
    for stem in sorted(pages):  # 00_..05_: paper order
        rows.append(f"<tr><td>{html.escape(titles[stem])}</td>" + "".join(
            f'<td><a href="{pages[stem][p]}">notebook</a></td>' if p in pages[stem]
            else '<td class="muted">not run</td>' for p in profiles) + "</tr>")
    start = " or the ".join(f'<a href="{p}">{html.escape(name)}</a>' for p, name in docs_links)
    nav = ("<nav>" + " · ".join(f'<a href="{p}">{html.escape(name)}</a>' for p, name in docs_links) + "</nav>"
           if docs_links else "")
    body = ("<h1>Finding the mistakes of image classifiers: executed notebooks and reports</h1>\n"
            "<p>Rendered by <code>make html</code> (<code>python -m helpers.tools.html_site</code>) from the executed "
            "notebooks and <code>figures/&lt;profile&gt;/report.md</code> as they are on disk: the committed runs, "
            "unless a local <code>make figures</code> replaced them.  Nothing was executed to build this page.  "
            "Notebooks 00-03 follow paper 1 (conductance, LCR, the joint classifier), 04-05 paper 2 "
            "(counterfactual filters, model debugging).</p>\n"
            + (f"<p>Start with the {start}: what the companion is, how to run it, what the papers did and what "
               "was found.</p>\n" if docs_links else "")
            + f"<table><tr><th>notebook</th>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n")
    return _page("Executed notebooks and reports", body, nav)


# --------------------------------------------------------------------------------------------------------------
# the link checker

#: tags and attributes that load a resource when the page opens (not a link the reader follows)
RESOURCE_ATTRS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "video": "src", "audio": "src",
                  "embed": "src", "input": "src", "track": "src", "link": "href", "object": "data"}


class _PageScan(HTMLParser):
    """The ids, links and loaded resources of one page, and URLs of other hosts in its scripts and styles."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.inline_external: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id",) + (("name",) if tag == "a" else ()):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src", "data", "poster"):
            if attrs.get(key) is not None and not (key == "data" and tag != "object"):
                self.links.append((tag, key, attrs[key]))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            self.inline_external += re.findall(r"""(?:@import\s+|url\(\s*)["']?((?:https?:)?//[^"')\s]+)""", data)
        elif self._in == "script":
            self.inline_external += re.findall(r"""(?:import\s*\(?|src\s*=)\s*["'`]((?:https?:)?//[^"'`]+)""", data)


def check_site(out: str | Path) -> dict[str, list[str]]:
    """Check every page under ``out``: returns ``{"dead links": [...], "dead anchors": [...], "missing images":
    [...], "external resources": [...]}`` (each item ``page: url``), all empty for a sound site."""
    out = Path(out).resolve()
    scans: dict[Path, _PageScan] = {}
    for page in sorted(out.rglob("*.html")):
        scan = _PageScan()
        scan.feed(page.read_text(encoding="utf-8", errors="replace"))
        scan.close()
        scans[page] = scan
    problems: dict[str, list[str]] = {"dead links": [], "dead anchors": [], "missing images": [],
                                      "external resources": []}
    for page, scan in scans.items():
        name = page.relative_to(out).as_posix()
        problems["external resources"] += [f"{name}: {u}" for u in scan.inline_external]
        for tag, attr, url in scan.links:
            url = url.strip()
            if SCHEME.match(url):
                if RESOURCE_ATTRS.get(tag) == attr and re.match(r"(?:https?:)?//", url, flags=re.I):
                    problems["external resources"].append(f"{name}: <{tag} {attr}={url}>")
                continue
            path, _, frag = url.partition("#")
            path = unquote(path.split("?", 1)[0])
            if path.startswith("/"):
                problems["dead links"].append(f"{name}: {url} (absolute path)")
                continue
            target = Path(os.path.normpath(page.parent / path)) if path else page
            if not target.is_file() or not _is_under(target, out):
                kind = "missing images" if tag == "img" else "dead links"
                problems[kind].append(f"{name}: {url}")
                continue
            ids = scans[target].ids if target in scans else set()
            if frag and frag not in ids and unquote(frag) not in ids:  # as browsers: the fragment, then decoded
                problems["dead anchors"].append(f"{name}: {url}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / "build" / "html"), help="output folder (default build/html)")
    ap.add_argument("--profiles", nargs="*", help="profiles to render (default: every one with notebooks or a report)")
    ap.add_argument("--check", action="store_true", help="then check every link, anchor and image of the site; "
                                                         "exit 1 if one is dead or a page loads from another host")
    a = ap.parse_args(argv)
    index = build_site(a.out, a.profiles)
    print(f"wrote {index}")
    if a.check:
        problems = check_site(a.out)
        for kind, items in problems.items():
            for item in items:
                print(f"html: {kind[:-1]}: {item}", file=sys.stderr)
        print("check: " + ", ".join(f"{len(v)} {k}" for k, v in problems.items()))
        return 1 if any(problems.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
