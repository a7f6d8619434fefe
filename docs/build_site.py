"""Lay out and build the offline documentation site (`make docs`): chapters, API reference, assignments, reports.

`python docs/build_site.py` writes the site source to `_site_src/` and the site to `site/` (both ignored by git).
`--mini` builds only the index, one chapter and one assignment (what tests/test_site.py uses when no site is built).
Nothing is executed and nothing is fetched: the notebooks are committed executed, MathJax is served from the site.
"""
import argparse, configparser, copy, json, os, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
MATHJAX_PLACEHOLDER = 'MMVAE_NB_MATHJAX_URL'       # docs/site_hooks.py makes it relative to each page
IMAGE_EXTS = {'.png', '.jpg', '.jpeg', '.svg', '.gif'}


def settings():
    "The `[DEFAULT]` section of settings.ini (git_url, branch, title, description ...)."
    cp = configparser.ConfigParser(); cp.read(ROOT / 'settings.ini')
    return dict(cp['DEFAULT'])


def notebook_title(nb, fallback):
    "The text of the notebook's first `# ` heading (nbdev's title), else `fallback`."
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        for line in ''.join(c['source']).splitlines():
            if line.startswith('# '): return line[2:].strip()
    return fallback


def md_title(path):
    "The first `# ` heading of a Markdown file, else its folder and file name."
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('# '): return line[2:].strip()
    return f'{path.parent.name} ({path.name})'


def md_cell(text):
    return {'cell_type': 'markdown', 'metadata': {}, 'source': text.splitlines(True)}


def colab_cell(cfg, rel_path):
    "The 'run it in Colab' link and install line every chapter page starts with (after its title)."
    user_repo = cfg['git_url'].rstrip('/').removeprefix('https://github.com/')
    url = f"https://colab.research.google.com/github/{user_repo}/blob/{cfg['branch']}/nbs/{rel_path}"
    name = Path(rel_path).name
    return md_cell(f'<p class="mmvae-colab"><a href="{url}">&#9654; Run it in Colab</a> &middot; '
                   f'<a href="./{name}" download>download the notebook</a> (<code>nbs/{rel_path}</code>)</p>\n\n'
                   f"In Colab (or any fresh environment) install the package first:\n\n"
                   f"```bash\npip install {pip_target(cfg)}\n```\n")


def pip_target(cfg):
    # The README installs from a checkout (`pip install -e .`): there is no PyPI release to name, so the git URL.
    return f"git+{cfg['git_url'].rstrip('/')}.git"


def resolve_image(ref, nb_dir):
    "`ref` as a page in `nb_dir` can load it: unchanged if it resolves, else the one file of its name under nbs/results, else None."
    if re.match(r'^[a-z]+:', ref) or ref.startswith('/') or '{' in ref: return ref
    if (nb_dir / ref).exists(): return ref
    hits = sorted((NBS / 'results').rglob(Path(ref).name))
    return Path('results', hits[0].relative_to(NBS / 'results')).as_posix() if len(hits) == 1 else None


def fix_markdown(text, nb_dir, where, problems):
    "Local links for the site: `X.ipynb` -> `X.html`; images shown from a report (relative to it) re-pointed."
    text = re.sub(r'\]\(((?!https?:)[^)\s]+?)\.ipynb(#[^)]*)?\)', lambda m: f'](./{m[1]}.html{m[2] or ""})', text)
    def image(m):
        ref = m[2]
        if Path(ref).suffix.lower() not in IMAGE_EXTS: return m[0]
        new = resolve_image(ref, nb_dir)
        if new is None:
            problems.append(f'{where}: image {ref} not found'); return f'*(figure not in the repository: `{ref}`)*'
        return f'![{m[1]}]({new})'
    return re.sub(r'!\[([^\]]*)\]\(([^)\s]+)\)', image, text)


def strip_directives(src):
    return ''.join(l for l in src.splitlines(True) if not l.lstrip().startswith('#|'))


def site_notebook(nb, nb_dir, where, problems, header=None):
    "A copy of `nb` as the site shows it: nbdev's hidden cells dropped, `#|` lines removed, links made local."
    nb = copy.deepcopy(nb)
    cells = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'code':
            if re.search(r'^\s*#\|\s*hide\s*$', src, re.M): continue
            c['source'] = strip_directives(src).splitlines(True)
            if not ''.join(c['source']).strip() and not c.get('outputs'): continue    # e.g. only `#| default_exp`
            for o in c.get('outputs', []):
                data = o.get('data', {})
                data.pop('application/vnd.jupyter.widget-view+json', None)   # no widget state: keep the text fallback
                if 'text/markdown' in data:     # e.g. a report shown with display(Markdown(...)): its links fixed
                    data['text/markdown'] = fix_markdown(''.join(data['text/markdown']), nb_dir, where, problems)
                    data.pop('text/html', None)   # nbconvert would prefer the HTML twin, whose links are not fixed
        elif c['cell_type'] == 'markdown':
            c['source'] = fix_markdown(src, nb_dir, where, problems).splitlines(True)
        cells.append(c)
    if header is not None:
        first = next((i for i, c in enumerate(cells) if c['cell_type'] == 'markdown'), -1)
        cells.insert(first + 1, header)
    nb['cells'] = cells
    nb.get('metadata', {}).pop('widgets', None)
    return nb


def write_nb(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')


def load_nb(path): return json.loads(Path(path).read_text(encoding='utf-8'))


def chapters(mini=False):
    "The chapters in reading order (sorted file names), index and `_` files excluded."
    nbs = [p for p in sorted(NBS.glob('*.ipynb')) if p.name != 'index.ipynb' and not p.name.startswith(('_', '.'))]
    return [next(p for p in nbs if has_figure(load_nb(p)))] if mini else nbs


def has_figure(nb):
    "Whether a code cell of `nb` has a PNG output (the mini site's chapter must show one)."
    return any('image/png' in o.get('data', {}) for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))


def assignments(mini=False):
    nbs = sorted((NBS / 'assignments').glob('*.ipynb'))
    return nbs[:1] if mini else nbs


def reports():
    "(title, path under nbs/) of each reproduction report: report.md, else results.md, else the folder's own .md files."
    found = []
    for d in sorted(p for p in (NBS / 'results').iterdir() if p.is_dir()):
        mds = [d / 'report.md'] if (d / 'report.md').exists() else [d / 'results.md'] if (d / 'results.md').exists() \
            else [p for p in sorted(d.glob('*.md')) if p.stem == d.name or p.stem.startswith(d.name)]
        found += [(md_title(p), p.relative_to(NBS)) for p in mds]
    return found


def api_modules():
    "Dotted names of the exported modules (mmvae_nb/ and mmvae_nb/papers/), `_modidx` and `__init__` excluded."
    lib = ROOT / 'mmvae_nb'
    mods = [p for p in sorted(lib.glob('*.py')) + sorted((lib / 'papers').glob('*.py')) if not p.stem.startswith('_')]
    return ['.'.join(p.relative_to(ROOT).with_suffix('').parts) for p in mods]


def module_chapters():
    "Dotted module name -> (chapter stem, chapter title), from each notebook's `#| default_exp`."
    out = {}
    for p in chapters():
        nb = load_nb(p)
        exp = next((m[1] for c in nb['cells'] if c['cell_type'] == 'code'
                    for m in [re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)] if m), None)
        if exp: out[f'mmvae_nb.{exp}'] = (p.stem, notebook_title(nb, p.stem))
    return out


def copy_mathjax(dest):
    "MathJax 2.7 from the jupyter-server-mathjax package, trimmed to what TeX input + HTML-CSS output load."
    try: import jupyter_server_mathjax
    except ImportError: sys.exit('jupyter-server-mathjax is missing: pip install -r docs/requirements.txt')
    src = Path(jupyter_server_mathjax.__file__).parent / 'static'
    for part in ['MathJax.js', 'config', 'jax/input', 'jax/element', 'jax/output/HTML-CSS', 'extensions/TeX',
                 'extensions/HTML-CSS', 'extensions/MathMenu.js', 'extensions/MathZoom.js', 'extensions/MathEvents.js',
                 'extensions/Safe.js', 'extensions/tex2jax.js', 'extensions/FontWarnings.js', 'fonts/HTML-CSS/STIX-Web',
                 'localization/en']:
        s, d = src / part, dest / part
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(s, d) if s.is_dir() else shutil.copy2(s, d)
    # The package ships STIX-Web fonts only (MathJax's default web font is TeX): point HTML-CSS at them.
    (dest / 'config/local').mkdir(parents=True, exist_ok=True)
    (dest / 'config/local/site.js').write_text(
        'MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null},\n'
        '  tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], processEscapes: true}});\n'
        'MathJax.Ajax.loadComplete("[MathJax]/config/local/site.js");\n')


def index_notebook(cfg, chs, asg, reps, problems):
    "nbs/index.ipynb followed by the site's contents (links to every page, in reading order)."
    nb = site_notebook(load_nb(NBS / 'index.ipynb'), NBS, 'index.ipynb', problems)
    lines = ['## This site', '', f"Built offline from the repository ([{cfg['git_url']}]({cfg['git_url']})) "
             'by `make docs`: every chapter as committed, executed; the API from the exported docstrings; '
             'the assignments as students get them; the reproduction reports.', '', '### Chapters', '']
    lines += [f'- [{t}](./{p.stem}.html) (`{p.stem}`)' for p, t in chs]
    if asg: lines += ['', '### Assignments', ''] + [f'- [{t}](./assignments/{p.stem}.html)' for p, t in asg]
    if reps: lines += ['', '### Reproduction reports', ''] + [f'- [{t}](./{p.as_posix()[:-3]}.html)' for t, p in reps]
    nb['cells'].append(md_cell('\n'.join(lines) + '\n'))
    return nb


def layout(src, mini=False):
    "Write the site source under `src` (docs/ and mkdocs.yml); returns the problems found (e.g. missing figures)."
    cfg, problems = settings(), []
    docs = src / 'docs'
    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    chs = [(p, notebook_title(load_nb(p), p.stem)) for p in chapters(mini)]
    for p, _ in chs:
        write_nb(site_notebook(load_nb(p), NBS, p.name, problems, colab_cell(cfg, p.name)), docs / p.name)
    asg = []
    if assignments(mini):
        from mmvae_nb.grading import make_student       # what `python -m mmvae_nb.grading student` runs
        for p in assignments(mini):
            student = docs / 'assignments' / p.name
            student.parent.mkdir(parents=True, exist_ok=True)
            make_student(p, student)
            nb = load_nb(student)
            header = md_cell(f'<p class="mmvae-colab">The student version (solutions removed, outputs cleared): '
                             f'<a href="./{p.name}" download>download the notebook</a>, fill in the function, '
                             'run the checker cell. Grading: chapter <a href="../11_grading.html">11_grading</a>.</p>\n')
            write_nb(site_notebook(nb, p.parent, f'assignments/{p.name}', problems, header), student)
            asg.append((p, notebook_title(nb, p.stem)))
    reps = [] if mini else reports()
    if reps:
        for f in (NBS / 'results').rglob('*'):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS | {'.md', '.csv', '.json'}:
                d = docs / f.relative_to(NBS); d.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(f, d)
        for _, rel in reps:
            md = docs / rel
            md.write_text(fix_markdown(md.read_text(encoding='utf-8'), (NBS / rel).parent, rel.as_posix(), problems),
                          encoding='utf-8')
    write_nb(index_notebook(cfg, chs, asg, reps, problems), docs / 'index.ipynb')
    api = []
    if not mini:
        mod_ch = module_chapters()
        for mod in api_modules():
            ch, title = mod_ch.get(mod, (None, ''))
            page = docs / 'api' / f'{mod}.md'
            page.parent.mkdir(parents=True, exist_ok=True)
            # the module docstring (nbdev: the chapter's summary) comes first through mkdocstrings
            intro = f'Derived and tested in the chapter [{ch}: {title}](../{ch}.ipynb).\n\n' if ch else ''
            page.write_text(f'# `{mod}`\n\n{intro}::: {mod}\n', encoding='utf-8')
            api.append((mod, f'api/{mod}.md'))
    copy_mathjax(docs / 'assets' / 'mathjax')
    (docs / 'assets' / 'site.css').write_text(
        '.mmvae-colab { font-size: .85rem; }\n.jp-RenderedImage img, .md-typeset img { max-width: 100%; }\n')
    write_config(src, cfg, chs, asg, reps, api, mini)
    return problems


def write_config(src, cfg, chs, asg, reps, api, mini):
    "mkdocs.yml: nav in reading order, Material without web fonts or CDN, notebooks rendered as committed."
    q = lambda s: json.dumps(s, ensure_ascii=False)        # a JSON string is a valid YAML scalar
    nav = ['  - Home: index.ipynb', '  - Chapters:'] + [f'    - {q(t)}: {p.name}' for p, t in chs]
    if asg: nav += ['  - Assignments:'] + [f'    - {q(t)}: assignments/{p.name}' for p, t in asg]
    if reps: nav += ['  - Reproduction reports:'] + [f'    - {q(t)}: {r.as_posix()}' for t, r in reps]
    if api: nav += ['  - API reference:'] + [f'    - {q(m)}: {page}' for m, page in api]
    plugins = ['  - search',   # no 'offline' plugin: it loads a shim from a CDN (search needs http, not file://)
               '  - mkdocs-jupyter:', '      execute: false', '      include_source: true',
               '      include_requirejs: false', '      no_prompt: true', f'      custom_mathjax_url: {q(MATHJAX_PLACEHOLDER)}',
               '      cache_dir: .cache/mkdocs-jupyter']
    if api:
        plugins += ['  - mkdocstrings:', '      handlers:', '        python:', f'          paths: [{q(str(ROOT))}]',
                    '          options:', '            show_root_heading: false', '            heading_level: 2',
                    '            show_source: false', '            members_order: source',
                    '            show_signature_annotations: true', '            separate_signature: true',
                    '            docstring_style: null', '            filters: ["!^_"]']
    text = '\n'.join([
        f"site_name: {q(cfg['title'])}", f"site_description: {q(cfg['description'])}",
        f"site_url: {q(cfg['doc_host'].rstrip('/') + cfg['doc_baseurl'].rstrip('/') + '/')}",
        'docs_dir: docs', 'use_directory_urls: false',
        'theme:', '  name: material', '  font: false', '  features: [navigation.tabs, navigation.top, toc.follow]',
        'extra_css: [assets/site.css]', f'hooks: [{q(str(ROOT / "docs" / "site_hooks.py"))}]',
        'markdown_extensions:', '  - tables', '  - toc:', '      permalink: true', '  - admonition',
        '  - pymdownx.arithmatex:', '      generic: true', '  - pymdownx.superfences', '  - pymdownx.highlight',
        # --strict still fails on a link to a missing file; these cover the generated .html links of report pages
        'validation:', '  omitted_files: info', '  absolute_links: info', '  unrecognized_links: info',
        'plugins:', *plugins, 'nav:', *nav, ''])
    (src / 'mkdocs.yml').write_text(text, encoding='utf-8')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--src', default=str(ROOT / '_site_src'), help='where the site source is laid out')
    ap.add_argument('--out', default=str(ROOT / 'site'), help='where the built site goes')
    ap.add_argument('--mini', action='store_true', help='index + one chapter + one assignment only')
    ap.add_argument('--no-strict', action='store_true', help='build without mkdocs --strict')
    a = ap.parse_args(argv)
    t0, src, out = time.time(), Path(a.src).resolve(), Path(a.out).resolve()
    problems = layout(src, a.mini)
    for p in problems: print(f'note: {p}')
    cmd = [sys.executable, '-m', 'mkdocs', 'build', '-q', '-f', str(src / 'mkdocs.yml'), '-d', str(out), '--clean']
    if not a.no_strict: cmd.append('--strict')
    r = subprocess.run(cmd, cwd=src, env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    if r.returncode: sys.exit(f'mkdocs build failed (exit {r.returncode}); the site source is in {src}')
    for p in chapters(a.mini) + [NBS / 'index.ipynb']:     # the download links give the notebook as committed
        shutil.copy2(p, out / p.name)
    print(f'site built in {time.time() - t0:.0f} s: {out / "index.html"}')


if __name__ == '__main__': main()
