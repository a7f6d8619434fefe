"""Load times of every data set present under the data root: first load (cold: a fresh, empty cache
directory, so raw files are hashed and decoded) and cached load (the same call again).

Data root: $MMVAE_NB_DATA, else /work/shared/data if it exists, else ../shared/data next to the repo.
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_data_load.py
"""
import os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import torch
torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
from mmvae_nb import data as D


def default_root():
    if os.environ.get(D.ENV_DATA): return Path(os.environ[D.ENV_DATA])
    for p in (Path('/work/shared/data'), REPO.parent / 'shared' / 'data'):
        if p.is_dir(): return p
    return None


def size_of(x):
    if isinstance(x, list): return f"{len(x)} x {len(x[0])}"
    return str(len(x))


def main():
    root = default_root()
    if root is None:
        print('no data root found (set MMVAE_NB_DATA); nothing to time'); return
    print(f'data root: {root}   torch threads: {torch.get_num_threads()}')
    print(f"{'dataset':<14}{'split':<10}{'items':>12}{'first load s':>14}{'cached s':>10}")
    for name, splits in D.SPLITS.items():
        for split in splits:
            if not D.available(name, root, split): continue
            with tempfile.TemporaryDirectory() as cache:
                t0 = time.perf_counter()
                try: out = D.DATASETS[name](split, root=root, cache=cache)
                except (D.MissingDataError, D.ChecksumError) as e:
                    print(f"{name:<14}{split:<10}  skipped: {str(e).splitlines()[0]}"); continue
                t1 = time.perf_counter()
                D.DATASETS[name](split, root=root, cache=cache)
                t2 = time.perf_counter()
            print(f"{name:<14}{split:<10}{size_of(out):>12}{t1 - t0:>14.2f}{t2 - t1:>10.3f}")


if __name__ == '__main__':
    main()
