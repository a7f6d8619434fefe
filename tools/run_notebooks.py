"""Execute notebooks in place and keep light outputs: `make notebooks` (all chapters and assignments) or
`python tools/run_notebooks.py nbs/02_elbo.ipynb ...`.

Cells marked `#| eval: false` are not run (their old outputs are dropped); `#| slow` cells, which `nbdev_test` skips,
are run here, so a chapter's figure that needs a short training (cached under the user cache) is saved. Every PNG is
re-encoded with an adaptive 32-colour palette when that makes it smaller (the committed report figures under
nbs/results too); widget views are dropped (their static fallback stays). `--lighten-only` does that to the
notebooks as they are, without executing them. The run fails if a PNG stays over 100 KB or `nbs/` grows over 3 MB."""
from __future__ import annotations
import argparse, base64, io, os, re, subprocess, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
MAX_PNG, MAX_NBS = 100_000, 3_000_000
WIDGET = 'application/vnd.jupyter.widget-view+json'

def skipped(cell) -> bool: return bool(re.search(r'^#\|\s*eval:\s*false', cell.source, re.M))

def smaller_png(data: bytes, colors: int = 32) -> bytes:
    "The PNG re-encoded with an adaptive palette (and optimised) when that is smaller; else unchanged."
    from PIL import Image
    im = Image.open(io.BytesIO(data))
    if im.mode in ('RGBA', 'LA'):
        bg = Image.new('RGB', im.size, 'white'); bg.paste(im, mask=im.split()[-1]); im = bg
    buf = io.BytesIO(); im.convert('RGB').quantize(colors=colors).save(buf, 'PNG', optimize=True)
    return buf.getvalue() if buf.tell() < len(data) else data

def lighten(nb) -> list:
    "Shrink PNGs and drop widget views in place; returns [(cell index, PNG bytes)] still over the limit."
    big = []
    nb.metadata.pop('widgets', None)
    for i, c in enumerate(nb.cells):
        seen, kept = set(), []
        for o in c.get('outputs', []):
            d = o.get('data', {})
            d.pop(WIDGET, None)
            if 'image/png' in d:
                # a cell that returns its figure shows it twice (the value, and the inline backend's open figure)
                if d['image/png'] in seen: continue
                seen.add(d['image/png'])
                png = smaller_png(base64.b64decode(d['image/png']))
                d['image/png'] = base64.b64encode(png).decode()
                if len(png) > MAX_PNG: big.append((i, len(png)))
            kept.append(o)
        if c.cell_type == 'code': c.outputs = kept
    return big

def lighten_results() -> int:
    "Re-encode the report figures under nbs/results like the notebooks' PNGs; returns the bytes saved."
    saved = 0
    for f in sorted((ROOT / 'nbs' / 'results').rglob('*.png')):
        data = f.read_bytes(); png = smaller_png(data)
        if len(png) < len(data): f.write_bytes(png); saved += len(data) - len(png)
    return saved

def run(path: Path, timeout: int, execute: bool = True) -> tuple[float, int, list]:
    nb = nbformat.read(path, as_version=4)
    if not execute:
        big = lighten(nb); nbformat.write(nb, path)
        return 0.0, path.stat().st_size, big
    hidden = [c for c in nb.cells if c.cell_type == 'code' and skipped(c)]
    for c in hidden: c.cell_type = 'raw'           # nbclient runs code cells only
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    for c in hidden: c.cell_type, c.outputs, c.execution_count = 'code', [], None
    big = lighten(nb)
    nbformat.write(nb, path)
    return time.time() - t0, path.stat().st_size, big

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('notebooks', nargs='*', help='default: nbs/*.ipynb and nbs/assignments/*.ipynb')
    ap.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
    ap.add_argument('--lighten-only', action='store_true', help='shrink the saved outputs without executing anything')
    a = ap.parse_args(argv)
    paths = [Path(p).resolve() for p in a.notebooks] or sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 'nbs' / 'assignments').glob('*.ipynb'))
    os.environ.setdefault('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    os.environ['MMVAE_NB_WIDGETS'] = '0'    # explorers save their static figure: no widget state in the notebooks
    failed, too_big = [], []
    for p in paths:
        try:
            secs, size, big = run(p, a.timeout, execute=not a.lighten_only)
            print(f'{p.relative_to(ROOT)}: {secs:6.1f} s, {size / 1e3:7.1f} KB' + (f'  PNG over 100 KB in cells {big}' if big else ''), flush=True)
            too_big += [(p.name, b) for b in big]
        except Exception as e:                        # keep going: report every failing notebook at the end
            print(f'{p.relative_to(ROOT)}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})', flush=True)
            failed.append(p.name)
    print(f'nbs/results: report figures {lighten_results() / 1e3:.1f} KB smaller')
    subprocess.run([str(Path(sys.executable).parent / 'nbdev_clean')], cwd=ROOT, check=True)
    total = sum(f.stat().st_size for f in (ROOT / 'nbs').rglob('*') if f.is_file())
    print(f'nbs/: {total / 1e6:.2f} MB (limit {MAX_NBS / 1e6:.0f} MB)')
    problems = ([f'failed: {failed}'] if failed else []) + ([f'PNG over 100 KB: {too_big}'] if too_big else []) + \
               ([f'nbs/ is {total / 1e6:.2f} MB > 3 MB: make figures smaller'] if total > MAX_NBS else [])
    if problems: sys.exit('; '.join(problems))

if __name__ == '__main__': main()
