"""Readable HTML for the rendered course: pages that work offline, and the chapter map.

``tools/render_course.py`` executes the notebooks; this module turns them into a small site in
the output folder (``build/`` by default):

    build/NN_slug.html        one page per chapter (figures embedded, math typeset by MathJax)
    build/_static/mathjax/    MathJax 2.7, copied from the ``jupyter-server-mathjax`` package
    build/index.html          the chapter map: title, link, runtime and mode of each chapter
    build/render.json         what index.html is built from (one record per rendered chapter)

Offline
-------
nbconvert's ``lab`` template loads MathJax, require.js and (on demand) mermaid from a CDN at view
time, so a page opened without network shows every equation as raw ``$…$``. Here MathJax is
copied next to the pages and referenced by a relative URL, and the template's other remote
loaders are dropped: require.js only serves ipywidgets' embed manager and old-style JavaScript
outputs, and mermaid only mermaid diagrams, none of which the course renders (tqdm's widgets
are off in course builds). ``write_page`` refuses to write a page that still loads anything
remote (``remote_references``), so a template change in nbconvert fails the build instead of
silently breaking offline reading.

The package ships MathJax's HTML-CSS output with the STIX-Web fonts only (no TeX fonts, no
CommonHTML output), so the pages use config ``TeX-AMS-MML_HTMLorMML-full`` and tell HTML-CSS to
use STIX-Web; left at MathJax's defaults it would look for the missing TeX web fonts and fall
back to poorly spaced system fonts.
"""

from __future__ import annotations

import html
import json
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import cache
from html.parser import HTMLParser
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
import nbformat

MATHJAX_PACKAGE = "jupyter_server_mathjax"  # PyPI: jupyter-server-mathjax (in the `course` extra)
MATHJAX_DIR = "_static/mathjax"  # relative to the output folder, hence to every page
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"  # the combined config the package ships; Safe as in nbconvert
# The package's SVG font data is useless without the SVG output jax, which it does not ship.
MATHJAX_SKIP = ("SVG",)
MANIFEST = "render.json"
INDEX = "index.html"

# nbconvert's lab template without its remote loaders (see the module docstring), MathJax set to
# the STIX-Web fonts the package ships. Blocks named as in nbconvert's lab/index.html.j2.
OFFLINE_TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
"""

# Elements a browser fetches on its own when it shows a page, and the attribute it fetches.
FETCHED = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "embed": "src",
           "audio": "src", "video": "src"}
CSS_URL_RE = re.compile(r"""url\(\s*['"]?([^'")\s]+)""")
HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


# ---------------------------------------------------------------------------------------------
# MathJax and the pages
# ---------------------------------------------------------------------------------------------


def mathjax_source() -> Path:
    """MathJax's folder inside the installed ``jupyter-server-mathjax`` package (not imported:
    importing it starts loading Jupyter Server)."""
    spec = find_spec(MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "offline HTML needs MathJax from the jupyter-server-mathjax package, which is not installed: "
            'pip install -e ".[course]" (or pip install jupyter-server-mathjax)'
        )
    source = Path(next(iter(spec.submodule_search_locations))) / "static"
    if not (source / "MathJax.js").is_file():
        raise RuntimeError(f"{source} holds no MathJax.js: reinstall jupyter-server-mathjax")
    return source


def install_mathjax(out: Path) -> str:
    """Copy MathJax into ``out/_static/mathjax``; return its version (e.g. ``'2.7.9'``)."""
    source = mathjax_source()
    shutil.copytree(source, out / MATHJAX_DIR, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*MATHJAX_SKIP))
    return mathjax_version(out / MATHJAX_DIR)


def mathjax_version(folder: Path) -> str:
    """The version MathJax.js in ``folder`` declares (``MathJax.version="2.7.9"``)."""
    found = re.search(r'MathJax\.version\s*=\s*"([^"]+)"', (folder / "MathJax.js").read_text(encoding="utf-8"))
    return found.group(1) if found else "unknown"


def mathjax_url() -> str:
    """MathJax's URL as the pages load it: relative, so the output folder can move or be zipped."""
    return f"{MATHJAX_DIR}/MathJax.js?config={MATHJAX_CONFIG}"


def render_page(nb: nbformat.NotebookNode, title: str) -> str:
    """The HTML page of ``nb``: nbconvert's lab look, figures embedded, nothing fetched remotely."""
    from nbconvert import HTMLExporter  # imported late: slow, and only needed here

    exporter = HTMLExporter(
        template_name="lab",
        template_file="offline.html.j2",
        extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})],
        mathjax_url=mathjax_url(),
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def write_page(nb: nbformat.NotebookNode, path: Path, title: str) -> None:
    """Write ``nb``'s page to ``path``. Raises ``RuntimeError`` if it would load anything remote."""
    body = render_page(nb, title)
    remote = remote_references(body)
    if remote:
        raise RuntimeError(f"{path.name} would load {remote} over the network; the course pages must read offline")
    path.write_text(body, encoding="utf-8")


class _FetchedURLs(HTMLParser):
    """Collects the URLs a browser fetches by itself: ``FETCHED`` attributes and CSS ``url(…)``."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = FETCHED.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]
        self.urls += [url for name, value in attrs if name == "style" and value for url in CSS_URL_RE.findall(value)]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += CSS_URL_RE.findall(data)


def remote_references(page: str) -> list[str]:
    """URLs in ``page`` that a browser would fetch from the network (``http:``, ``https:``, ``//host``).

    Local paths and ``data:`` URLs are fine; links (``<a href>``) are not fetched and not counted.
    """
    parser = _FetchedURLs()
    parser.feed(page)
    return [url for url in parser.urls if urlsplit(url).scheme in ("http", "https") or url.startswith("//")]


def notebook_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The text of the notebook's first Markdown heading (``# Chapter 1: …``), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            found = HEADING_RE.match(line)
            if found:
                return found.group(1)
    return fallback


# ---------------------------------------------------------------------------------------------
# The chapter map
# ---------------------------------------------------------------------------------------------


def environment(repo: Path | None = None) -> dict[str, str]:
    """What shaped a render, without dates or paths (same checkout and packages, same values):
    the git commit of ``repo`` (``+dirty`` with uncommitted changes) when it is a checkout, and
    the versions of Python and the packages that compute and draw the pages."""
    commit = git_commit(repo) if repo is not None else None
    described = {"commit": commit} if commit else {}
    described["python"] = platform.python_version()
    for package in ("minidiff", "torch", "nbconvert", "jupyter-server-mathjax"):
        try:
            described[package] = version(package)
        except PackageNotFoundError:
            described[package] = "not installed"
    return described


@cache
def git_commit(repo: Path) -> str | None:
    """``git describe --always --dirty`` of ``repo`` (e.g. ``5b73d63-dirty``); None outside a checkout."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


@dataclass
class ChapterRecord:
    """One rendered chapter, as index.html shows it."""

    stem: str  # "01_forward_process_elbo"
    title: str  # the notebook's first heading
    html: str  # page, relative to the output folder
    mode: str  # "quick" or "full"
    seconds: float  # execution time of the notebook
    status: str  # "ok", or "FAILED in cell 12: ValueError: …"
    environment: dict[str, str] = field(default_factory=dict)


def update_manifest(out: Path, records: list[ChapterRecord]) -> list[ChapterRecord]:
    """Merge ``records`` into ``out/render.json`` and return every chapter it lists, by name.

    Chapters rendered by earlier runs (``make course NB=01`` then ``NB=02``) stay listed while their
    page exists; a record of this run replaces an older one of the same chapter.
    """
    path = out / MANIFEST
    known: dict[str, ChapterRecord] = {}
    if path.is_file():
        try:
            known = {entry["stem"]: ChapterRecord(**entry) for entry in json.loads(path.read_text())}
        except (ValueError, TypeError, KeyError):
            known = {}  # written by an older version of this script: rebuilt from this run
    known.update({record.stem: record for record in records})
    merged = [known[stem] for stem in sorted(known) if (out / known[stem].html).is_file()]
    path.write_text(json.dumps([asdict(record) for record in merged], indent=2) + "\n", encoding="utf-8")
    return merged


INDEX_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.4rem 0.6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
.failed { color: #b00020; }
footer { margin-top: 1.5rem; color: #555; font-size: 0.9rem; }
"""


def write_index(out: Path, records: list[ChapterRecord], mathjax: str) -> Path:
    """Write ``out/index.html``: one row per chapter (title linked to its page, notebook, mode,
    runtime, status), and a footer with the environments the chapters were rendered in."""
    rows = "\n".join(_index_row(record) for record in records)
    total = sum(record.seconds for record in records)
    environments = sorted({" · ".join(f"{k} {v}" for k, v in r.environment.items()) for r in records} - {""})
    footer = "".join(f"<p>Rendered with {html.escape(env)}.</p>" for env in environments)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>minidiff — the course</title>
<style>{INDEX_STYLE}</style>
</head>
<body>
<h1>minidiff — the course</h1>
<p>{len(records)} chapter(s), executed and rendered by <code>make course</code> (<code>tools/render_course.py</code>).
Pages read offline: math is typeset by MathJax {html.escape(mathjax)} from <code>{MATHJAX_DIR}/</code>.</p>
<table>
<thead><tr><th>chapter</th><th>notebook</th><th>mode</th><th>runtime</th><th>status</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><td>total</td><td></td><td></td><td class="num">{total:.1f} s</td><td></td></tr></tfoot>
</table>
<footer>{footer}</footer>
</body>
</html>
"""
    path = out / INDEX
    path.write_text(page, encoding="utf-8")
    return path


def _index_row(record: ChapterRecord) -> str:
    status_class = "" if record.status == "ok" else ' class="failed"'
    return (
        f'<tr><td><a href="{html.escape(record.html)}">{html.escape(record.title)}</a></td>'
        f"<td><code>{html.escape(record.stem)}.ipynb</code></td><td>{html.escape(record.mode)}</td>"
        f'<td class="num">{record.seconds:.1f} s</td><td{status_class}>{html.escape(record.status)}</td></tr>'
    )
