"""bench/gpu_check.py's dry run (what `make gpu-check` runs without CUDA), so the GPU check cannot rot: every
section reports, every registered model and paper experiment is in the JSON and the table, the CUDA-only
parts say they were skipped, and no dry-run number is presented as a projection. Also the random-data
sizes the throughput projection uses (bench/benchlib.py) against the library's own pairing."""
import json, os, re, subprocess, sys
from pathlib import Path
import torch
from mmvae_nb.experiments import EXPERIMENTS, MODELS
from mmvae_nb.multimodal import pair_by_class

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import benchlib  # noqa: E402

SECTIONS = ('cuda_tests', 'amp', 'paper_throughput', 'iwae', 'ddp', 'compile')


def test_make_target_runs_the_script():
    r = subprocess.run(['make', '-n', 'gpu-check', 'GPU_CHECK_OUT=/some/where'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'bench/gpu_check.py --out /some/where' in r.stdout


def test_mnist_svhn_size_is_the_pairing_length():
    labels = lambda counts: torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    for dm, cap in ((1, 10000), (3, 10000), (2, 5000)):
        ia, _ = pair_by_class(labels(benchlib.MNIST_TRAIN_PER_CLASS), labels(benchlib.SVHN_TRAIN_PER_CLASS), dm=dm, max_per_class=cap)
        assert len(ia) == benchlib.mnist_svhn_size(dm, cap)
    assert benchlib.mnist_svhn_size(30) == 1_682_040          # MMVAE's training set (dm=30)


def test_nominal_shapes_cover_every_paper_config():
    for name, exp in EXPERIMENTS.items():
        if 'paper' not in exp.configs: continue
        specs, n, src = benchlib.nominal_data(exp.configs['paper'])
        assert len(specs) >= 1 and n >= exp.configs['paper'].batch_size and src, name
        ds = benchlib.random_like(specs, 3)
        assert ds.specs == tuple(specs) and len(ds) == 3


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / 'out'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MMVAE_NB_CACHE': str(tmp_path / 'cache')}
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--dry-run', '--out', str(out), '--work', str(tmp_path / 'work')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    res = json.loads((out / 'gpu_check.json').read_text())
    md = (out / 'gpu_check.md').read_text()
    secs = res['sections']
    assert tuple(secs) == SECTIONS and res['meta']['dry_run'] is True
    failed = {n: s.get('error') or [c for c in s.get('checks', []) if not c['ok']] for n, s in secs.items() if s['status'] == 'failed'}
    assert not failed, f"dry run failed: {failed}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0 and res['ok'], r.stdout[-3000:] + r.stderr[-3000:]
    assert all(s['status'] in ('ok', 'skipped') and 'seconds' in s and s['budget_s'] > 0 for s in secs.values())
    assert sum(s['budget_s'] for s in secs.values()) <= 8 * 60                 # the GPU run fits in 8 minutes
    # every registered model: trained in fp32 and bf16 (autocast on the CPU here), listed in the table
    amp = {row['model']: row for row in secs['amp']['rows']}
    assert set(MODELS) <= set(amp)
    for k, row in amp.items():
        assert len(row['fp32']['losses']) == len(row['bf16']['losses']) == row['steps'] >= 1, k
        assert re.search(rf"^\| {re.escape(k)} \(", md, re.M), f"model {k} missing from the table"
    # every paper config timed on random data of its shapes; no projection from a CPU measurement
    tp = {row['experiment']: row for row in secs['paper_throughput']['rows']}
    assert {n for n, e in EXPERIMENTS.items() if 'paper' in e.configs} <= set(tp)
    for n, row in tp.items():
        assert row['fp32']['samples_s'] > 0 and 'projected_h' not in row['fp32'] and 'bf16' not in row, n
        assert row['total_steps'] == row['steps_per_epoch'] * row['epochs'] and f"| {n} |" in md
    assert 'not a projection (dry run)' in md and 'DRY RUN' in md
    # what needs CUDA says it was skipped
    assert secs['compile']['status'] == 'skipped' and 'dry run' in secs['compile']['summary']
    tests = {t['test'].split('::')[-1]: t['outcome'] for t in secs['cuda_tests']['rows']}
    assert 'test_iterator_device_resident_on_gpu' in tests
    assert all(o == ('passed' if torch.cuda.is_available() else 'skipped') for o in tests.values())
    assert any('dry run' in n for n in secs['ddp']['notes']) and all(c['ok'] for c in secs['ddp']['checks'])
    assert secs['iwae']['rows'][0]['items_s_best'] > 0 and 'minutes_10k_pairs' not in secs['iwae']['rows'][0]
    log = (out / 'gpu_check.log').read_text()
    assert all(re.match(r'^\[\d\d:\d\d:\d\d \+ *\d+\.\d+s\] ', l) for l in log.splitlines())
    assert all(f'== {n}:' in log for n in SECTIONS)


def test_isolated_section_reports_through_its_child_process(tmp_path):
    "On a GPU every section runs in a child process that writes its result; here the cheapest one (compile: skipped)."
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--dry-run', '--isolate', 'yes', '--sections', 'compile',
                        '--out', str(out), '--work', str(tmp_path / 'work')],
                       cwd=ROOT, env={**os.environ, 'OMP_NUM_THREADS': '1'}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / 'gpu_check.json').read_text())
    assert list(res['sections']) == ['compile'] and res['sections']['compile']['status'] == 'skipped'
    assert (tmp_path / 'work' / 'compile.result.json').exists() and 'each in its own process' in r.stdout
