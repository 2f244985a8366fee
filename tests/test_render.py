"""The rendered course reads offline: `make course` pages load nothing remote and typeset math.

Two tiny notebooks (a heading, `$x^2$` and display math, one code cell) are rendered once per
module by ``render_course.main`` into a tmp folder, in two runs, exactly as ``make course NB=…``
would (kernels included: a few seconds each). The browser check needs Chromium and skips with
the command that installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import course_html
import nbformat
import pytest
import render_course
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

TITLE = "Squares, offline"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def tiny_notebook(title: str) -> nbformat.NotebookNode:
    """A 3-cell notebook with inline and display math."""
    return new_notebook(
        cells=[
            new_markdown_cell(f"# {title}\n\nThe square $x^2$ of a number."),
            new_code_cell("print(3 ** 2)"),
            new_markdown_cell("Summed: $$\\sum_{i=1}^n i^2 = \\frac{n(n+1)(2n+1)}{6}$$"),
        ]
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """``render_course.main`` run on two tiny notebooks, in two runs (as ``NB=…`` builds do)."""
    root = tmp_path_factory.mktemp("course")
    paths = []
    for stem, title in (("01_squares", TITLE), ("02_cubes", "Cubes")):
        path = root / "notebooks" / f"{stem}.ipynb"
        path.parent.mkdir(exist_ok=True)
        nbformat.write(tiny_notebook(title), path)
        paths.append(path)
    out = root / "build"
    # Two runs, the second in full mode (the notebooks do not care): it must keep the first chapter in the index.
    assert render_course.main([str(paths[0]), "--out", str(out), "--quick"]) == 0
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MINIDIFF_QUICK", raising=False)  # conftest sets it for every test
        assert render_course.main([str(paths[1]), "--out", str(out)]) == 0
    return out


class Tags(HTMLParser):
    """Every start tag's attributes, by tag name, and the page's text outside scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._skip = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._skip = tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip = False

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(page: Path) -> Tags:
    tags = Tags()
    tags.feed(page.read_text(encoding="utf-8"))
    return tags


@pytest.mark.slow  # a kernel renders the tiny notebooks (shared fixture)
def test_page_loads_no_remote_script_or_stylesheet(built):
    tags = parse(built / "01_squares.html")
    sources = [a["src"] for tag, a in tags.tags if tag == "script" and a.get("src")]
    hrefs = [a["href"] for tag, a in tags.tags if tag == "link" and a.get("href")]
    assert sources, "the page should load MathJax"
    for url in sources + hrefs:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"remote reference {url!r}"
    # nbconvert's template URLs (require.js, mermaid, widgets) are gone from the page, not just the tags.
    assert "cdnjs.cloudflare.com" not in (built / "01_squares.html").read_text(encoding="utf-8")


@pytest.mark.slow  # a kernel renders the tiny notebooks (shared fixture)
def test_mathjax_script_exists_relative_to_the_page(built):
    tags = parse(built / "01_squares.html")
    mathjax = [a["src"] for tag, a in tags.tags if tag == "script" and "MathJax.js" in (a.get("src") or "")]
    assert len(mathjax) == 1
    url = urlsplit(mathjax[0])
    assert (built / unquote(url.path)).is_file()
    # The combined config and the fonts it asks for are there too: without them math falls back.
    for config in re.search(r"config=([^&]+)", url.query).group(1).split(","):
        assert (built / course_html.MATHJAX_DIR / "config" / f"{config}.js").is_file(), config
    assert any((built / course_html.MATHJAX_DIR / "fonts/HTML-CSS/STIX-Web/woff").glob("*.woff"))


@pytest.mark.slow  # a kernel renders the tiny notebooks (shared fixture)
def test_index_links_every_page_with_title_mode_and_runtime(built):
    pages = sorted(p.name for p in built.glob("*.html") if p.name != "index.html")
    assert pages == ["01_squares.html", "02_cubes.html"]
    tags = parse(built / "index.html")
    links = [a["href"] for tag, a in tags.tags if tag == "a"]
    assert sorted(links) == pages
    text = " ".join(" ".join(tags.text).split())
    assert f"{TITLE} 01_squares.ipynb quick" in text  # the first run was quick,
    assert "Cubes 02_cubes.ipynb full" in text  # the second full: each row says its own mode
    assert re.search(r"01_squares\.ipynb quick \d+\.\d s ok", text)
    records = json.loads((built / "render.json").read_text())
    assert [r["stem"] for r in records] == ["01_squares", "02_cubes"]
    assert all(r["seconds"] > 0 and r["environment"]["python"] for r in records)
    assert not course_html.remote_references((built / "index.html").read_text(encoding="utf-8"))


@pytest.mark.slow  # a kernel renders the tiny notebooks (shared fixture)
def test_page_is_the_executed_notebook_titled_by_its_first_heading(built):
    page = (built / "01_squares.html").read_text(encoding="utf-8")
    assert f"<title>{TITLE}</title>" in page
    assert "<pre>9\n</pre>" in page  # the code cell ran: print(3 ** 2)


def test_remote_references_finds_what_a_browser_would_fetch():
    page = """<html><head>
    <script src="https://cdn.example.org/a.js"></script><script src="_static/mathjax/MathJax.js"></script>
    <link rel="stylesheet" href="//fonts.example.org/b.css"><link rel="stylesheet" href="local.css">
    <style>@font-face { src: url('http://x.org/f.woff') } .i { background: url(data:image/png;base64,AA) }</style>
    </head><body><img src="data:image/png;base64,AA"><img src="https://x.org/c.png">
    <div style="background: url(https://x.org/d.png)"></div><a href="https://example.org">a link</a></body></html>"""
    assert course_html.remote_references(page) == [
        "https://cdn.example.org/a.js",
        "//fonts.example.org/b.css",
        "http://x.org/f.woff",
        "https://x.org/c.png",
        "https://x.org/d.png",
    ]


def test_write_page_refuses_a_remote_script(tmp_path, monkeypatch):
    monkeypatch.setattr(course_html, "mathjax_url", lambda: "https://cdn.example.org/MathJax.js")
    with pytest.raises(RuntimeError, match=r"would load \['https://cdn.example.org/MathJax.js'\]"):
        course_html.write_page(tiny_notebook("t"), tmp_path / "t.html", "t")
    assert not (tmp_path / "t.html").exists()


def test_missing_mathjax_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(course_html, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"jupyter-server-mathjax.*pip install"):
        course_html.mathjax_source()


@pytest.mark.parametrize(
    ("source", "title"),
    [("# Chapter 1: Noise\ntext", "Chapter 1: Noise"), ("intro\n\n## Part *two* ##", "Part *two*"), ("no heading", "fb")],
)
def test_notebook_title(source, title):
    assert course_html.notebook_title(new_notebook(cells=[new_code_cell("# comment"), new_markdown_cell(source)]),
                                      "fb") == title


def test_manifest_drops_chapters_whose_page_is_gone(tmp_path):
    record = course_html.ChapterRecord("01_a", "A", "01_a.html", "quick", 1.5, "ok")
    (tmp_path / "01_a.html").write_text("<html></html>")
    assert course_html.update_manifest(tmp_path, [record]) == [record]
    (tmp_path / "01_a.html").unlink()
    assert course_html.update_manifest(tmp_path, []) == []


def test_index_marks_a_failed_chapter(tmp_path):
    failed = course_html.ChapterRecord("03_c", "C & D", "03_c.html", "full", 2.0, "FAILED in cell 4: ValueError: <bad>")
    page = course_html.write_index(tmp_path, [failed], "2.7.9").read_text(encoding="utf-8")
    assert '<td class="failed">FAILED in cell 4: ValueError: &lt;bad&gt;</td>' in page
    assert '<a href="03_c.html">C &amp; D</a>' in page


def test_environment_names_the_commit_of_a_checkout(repo_root, tmp_path):
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", course_html.environment(repo_root)["commit"])
    assert "commit" not in course_html.environment(tmp_path)  # not a checkout: no commit, no error


def chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


# Appended to a copy of the page: once MathJax has typeset, lists the web fonts the browser loaded
# (the DOM alone cannot tell STIX-Web glyphs from a system-font fallback).
FONT_PROBE = """<script>
MathJax.Hub.Queue(function () {
  document.fonts.ready.then(function () {
    var loaded = [];
    document.fonts.forEach(function (face) { if (face.status === "loaded") loaded.push(face.family); });
    var probe = document.createElement("pre");
    probe.id = "font-probe";
    probe.textContent = loaded.join(",");
    document.body.appendChild(probe);
  });
});
</script>
"""


def dump_dom(browser: str, page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with no network."""
    command = [browser, "--headless", "--disable-gpu", f"--user-data-dir={profile}",
               "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: no host name resolves, file:// still loads
               "--virtual-time-budget=20000", "--dump-dom", page.as_uri()]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow  # kernels render the tiny notebooks, then Chromium loads the page twice
def test_math_is_typeset_offline_in_a_headless_browser(built, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium: apt-get install chromium to run this check")
    dom = dump_dom(browser, built / "01_squares.html", tmp_path / "profile")
    # One inline and one display equation, each replaced by MathJax's frame (a display one inside a div).
    assert dom.count('class="MathJax"') == 2 and dom.count('class="MathJax_Display"') == 1
    assert 'id="MathJax-Span-' in dom  # HTML-CSS output: the equations became laid-out spans
    text = parse_dom_text(dom)
    assert "$x^2$" not in text and "$$" not in text, "raw TeX left on the page"

    # The same page, probed: its glyphs come from the STIX-Web fonts shipped in build/_static.
    page = (built / "01_squares.html").read_text(encoding="utf-8")
    base = f'<head><base href="{built.as_uri()}/">'  # the copy lives in tmp_path; its URLs stay relative to build/
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", base, 1).replace("</body>", FONT_PROBE + "</body>", 1), encoding="utf-8")
    loaded = re.search(r'<pre id="font-probe">([^<]*)</pre>', dump_dom(browser, probe, tmp_path / "profile"))
    assert loaded, "MathJax did not finish typesetting"
    assert "STIXMathJax_Main" in loaded.group(1).split(","), f"web fonts loaded: {loaded.group(1)!r}"


def parse_dom_text(dom: str) -> str:
    tags = Tags()
    tags.feed(dom)
    return "".join(tags.text)
