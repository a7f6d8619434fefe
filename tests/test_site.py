"""The documentation site (`make docs`) in headless chromium: the index, a chapter and an assignment load offline,
show their titles and a figure each, the chapter its rendered math, and no page loads anything from another host.

Uses the built `site/` (or `$MMVAE_NB_SITE`) when present, else builds a mini site (index + one chapter + one
assignment, ~30 s). Skips, with the reason, without chromium or the docs dependencies (docs/requirements.txt)."""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading
from html import unescape
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'docs'))
import build_site  # noqa: E402

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def docs_deps_missing():
    missing = []
    for mod in ['mkdocs', 'mkdocs_jupyter', 'material', 'mkdocstrings', 'jupyter_server_mathjax']:
        try: __import__(mod)
        except ImportError: missing.append(mod)
    return missing


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    if CHROMIUM is None: pytest.skip('chromium is not installed (apt-get install chromium; `make docs` does so as root)')
    built = Path(os.environ.get('MMVAE_NB_SITE', ROOT / 'site'))
    if (built / 'index.html').exists(): return built
    if missing := docs_deps_missing():
        pytest.skip(f'docs dependencies missing ({", ".join(missing)}): pip install -r docs/requirements.txt')
    # One mini build shared by pytest-xdist's workers (their base temp folders share a parent), under a file lock.
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    tmp = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / 'mini_site'
    with FileLock(str(tmp) + '.lock'):
        if not (tmp / 'site' / 'index.html').exists():
            subprocess.run([sys.executable, str(ROOT / 'docs' / 'build_site.py'), '--mini', '--src', str(tmp / 'src'),
                            '--out', str(tmp / 'site')], cwd=ROOT, check=True, timeout=600,
                           env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return tmp / 'site'


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def base_url(site):
    "The site served on 127.0.0.1 (a free port) for the test's duration."
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown(); server.server_close()


def rendered_dom(url, tmp_path):
    "The DOM chromium renders for `url` after its scripts ran (MathJax included), as text."
    r = subprocess.run([CHROMIUM, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                        f'--user-data-dir={tmp_path / "chromium"}', '--virtual-time-budget=8000', '--dump-dom', url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'md-content' in r.stdout, f'chromium could not load {url}: {r.stderr[-500:]}'
    return r.stdout


def h1_text(dom):
    m = re.search(r'<h1[^>]*>(.*?)</h1>', dom, re.S)
    assert m, 'page has no <h1> title'
    return unescape(re.sub(r'<[^>]+>', '', m[1])).replace('¶', '').strip()


def figures(dom, site, page):
    "The <img> figures of a page that carry their data (a PNG data URI) or name a file that exists in the site."
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom)
    return [s for s in srcs if s.startswith('data:image/png;base64,') and len(s) > 200
            or not s.startswith(('data:', 'http')) and (site / Path(page).parent / s.split('?')[0]).exists()]


def title_of(nb_path): return build_site.notebook_title(json.loads(Path(nb_path).read_text()), None)


def chapter_with_figure(site):
    "The first chapter (reading order) whose committed outputs hold a PNG and whose page is in the site."
    for p in build_site.chapters():
        if (site / f'{p.stem}.html').exists() and build_site.has_figure(build_site.load_nb(p)): return p
    pytest.fail('no chapter with a figure in the site')


def test_index(site, base_url, tmp_path):
    dom = rendered_dom(f'{base_url}/index.html', tmp_path)
    test_title = title_of(build_site.NBS / 'index.ipynb')
    assert h1_text(dom) == test_title == 'mmvae_nb'
    assert '<title>mmvae_nb</title>' in dom
    assert re.search(r'href="\./\d\w*\.html"', dom), 'the index links no chapter page'
    assert figures(dom, site, 'index.html'), 'the index shows no figure'


def test_chapter_page(site, base_url, tmp_path):
    ch = chapter_with_figure(site)
    dom = rendered_dom(f'{base_url}/{ch.stem}.html', tmp_path)
    assert h1_text(dom) == title_of(ch)
    assert len(figures(dom, site, f'{ch.stem}.html')) >= 1, 'the chapter page shows no figure'
    colab = f'https://colab.research.google.com/github/mmvae-nb/mmvae_nb/blob/main/nbs/{ch.name}'
    text = unescape(re.sub(r'<[^>]+>', '', dom))
    assert colab in dom and 'pip install git+https://github.com/mmvae-nb/mmvae_nb.git' in text
    assert 'class="MathJax' in dom, 'math was not typeset: MathJax did not load from the site'
    assert (site / 'assets/mathjax/MathJax.js').exists()


def test_assignment_page(site, base_url, tmp_path):
    pages = sorted((site / 'assignments').glob('*.html'))
    assert pages, 'the site has no assignment page'
    page = pages[0]
    dom = rendered_dom(f'{base_url}/assignments/{page.name}', tmp_path)
    assert h1_text(dom) == title_of(build_site.NBS / 'assignments' / f'{page.stem}.ipynb')
    assert 'NotImplementedError' in dom and 'BEGIN SOLUTION' not in dom, 'not the student version'
    assert figures(dom, site, f'assignments/{page.name}'), 'the assignment page shows no figure'
    assert f'href="./{page.stem}.ipynb"' in dom and (site / 'assignments' / f'{page.stem}.ipynb').exists(), \
        'the student notebook is not downloadable'
    student = json.loads((site / 'assignments' / f'{page.stem}.ipynb').read_text())
    assert not any(c.get('outputs') for c in student['cells']), 'the downloadable notebook is not the student version'


def test_no_external_resources(site):
    "Nothing a page renders with (scripts, styles, images, fonts) comes from another host: the site works offline."
    external = re.compile(r'<(?:script|img|iframe)[^>]*\ssrc="(?:https?:)?//[^"]*"'
                          r'|<link[^>]*rel="(?:stylesheet|preload|preconnect)"[^>]*href="(?:https?:)?//[^"]*"'
                          r'|@import\s+url\((?:https?:)?//')
    bad = {p.relative_to(site).as_posix(): m[0] for p in site.rglob('*.html')
           for m in [external.search(p.read_text(encoding='utf-8', errors='replace'))] if m}
    assert not bad, f'pages load external resources: {dict(list(bad.items())[:5])}'


def test_full_site_reports_and_api(site):
    "The full site (`make docs`): every report's figures resolve, every exported module has its API page."
    if not (site / 'results').exists(): pytest.skip('mini site: no reports or API pages (run `make docs`)')
    for title, rel in build_site.reports():
        page = site / rel.with_suffix('.html')
        assert page.exists(), f'report page missing: {rel}'
        srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text(encoding='utf-8'))
        assert all((page.parent / s).exists() for s in srcs), f'{rel}: a figure does not resolve'
    assert any(re.findall(r'<img[^>]*\ssrc="([^"]+\.png)"', (site / rel.with_suffix('.html')).read_text())
               for _, rel in build_site.reports()), 'no report shows a figure'
    for mod in build_site.api_modules():
        page = (site / 'api' / f'{mod}.html').read_text(encoding='utf-8')
        assert 'class="doc doc-' in page, f'{mod}: no API entries rendered'
