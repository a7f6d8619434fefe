#!/usr/bin/env python
"""One prepared check of the CUDA paths and of paper-scale cost, on one CUDA device in at most 8 minutes.

Sections, in this order, each with its own time budget (`SECTIONS`; 435 s in all, the run stops at
`--budget-s`, 450 s by default). Each is independent: a failing section is recorded with its error and
the next one runs; the exit status is 1 when any check failed.
  cuda_tests        the tests marked `cuda` (`pytest -m cuda`), each test's outcome; skipped on a GPU = failed
  amp               every model of the registry (`experiments.MODELS`, and any other model a registered
                    config names): the same weights trained for a few steps on the same batch in fp32
                    and in AMP bf16 through the Trainer; passes when every loss is finite and the
                    relative difference is <= TOL_FIRST at the first step and <= TOL_LAST at the last
  paper_throughput  every experiment's `paper` config: its model on random data of the dataset's shapes
                    (the real data is not on the device machine), warm-up steps, then timed Trainer
                    steps (synchronised), fp32 and AMP bf16; projected full run = steps per epoch x
                    epochs / speed (training only: evaluation and data loading are not included)
  iwae              IWAE-1000 items/s on the MMVAE MNIST-SVHN architecture (`bench/benchlib.py`, as
                    `bench/bench_iwae.py`)
  ddp               `torchrun --nproc_per_node 1`: a probe that joins an NCCL group and checks DDP's
                    gradients against the bare model's, then `torchrun -m mmvae_nb.cli train` with mid-epoch
                    checkpoints and a `--resume` to a second epoch
  compile           `torch.compile` (inductor) of MMVAE's loss through the Trainer (`compile=True`):
                    the same loss value as eager (TOL_COMPILE, `fallback_random` so that both draw the
                    same noise), the compile time and the speed-up of a training step
Writes gpu_check.json, gpu_check.md (the table) and gpu_check.log to --out (default out/gpu_check).
On a GPU each section runs in its own process (killed at its budget; a CUDA fault cannot spill over).

Without CUDA, or with --dry-run: tiny step counts on the CPU in one process, CUDA-only parts skipped
(the NCCL probe runs with gloo, the CLI train/resume in-process, AMP as autocast('cpu', bf16),
torch.compile not at all) and the table says so; no number of a dry run is a GPU measurement.

    make gpu-check                                   # here: the dry run; on a CUDA machine: the check
    python bench/gpu_check.py --dry-run --out /tmp/g # what tests/test_gpu_check.py runs
    PYTHONPATH=$PWD MMVAE_NB_CACHE=/tmp/mmvae-cache python3 bench/gpu_check.py --out $OUT/gpu_check   # device
"""
from __future__ import annotations
import argparse, contextlib, copy, io, json, math, os, platform, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import time, traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / 'bench'), str(ROOT)]
import torch

import benchlib as bl

# name, budget on a GPU (s), what it checks
SECTIONS = (('cuda_tests', 45, 'CUDA-only tests (pytest -m cuda)'),
            ('amp', 60, 'AMP bf16 vs fp32, a short training run of every model'),
            ('paper_throughput', 80, 'training samples/s of every paper config; projected full-run time'),
            ('iwae', 40, 'IWAE-1000 items/s, MMVAE MNIST-SVHN architecture'),
            ('ddp', 90, 'torchrun, world size 1: NCCL DDP probe; CLI train, checkpoint, resume'),
            ('compile', 120, "torch.compile of MMVAE's loss: value vs eager, compile time, speed-up"))
TOTAL_BUDGET_S = 450
# |bf16 - fp32| / |fp32| of the loss at the first and the last step. bf16 keeps 8 significant bits (2^-9 = 2e-3
# relative per rounding); the losses sum thousands of terms. CPU autocast (dry run, batch 8) gave <= 2e-4 at the first step
# for every model but MEME (below). The dry run's AMP batch is 8, not the 2 of its other sections: Adam's first step moves every weight by
# about lr whatever its gradient's size, so on 2 items bf16 rounding of near-zero gradients becomes full-size moves (the
# demo's JMVAE-kl: 6.3e-2 at the second step on 2 items, 4.7e-4 on 8).
TOL_FIRST, TOL_LAST = 1e-2, 5e-2
# MEME's loss weights each item's bound by w = sg(exp(log q(t|z_0) - LSE_k log q(t|z_k))), nearly 0 or K: a bf16 rounding
# that changes which of the K samples is best flips w for a few items, a jump of K bounds in the loss (2% measured on the
# CPU dry run). Its tolerance is wider; a finite loss that tracks fp32 within 5% is what AMP can promise there.
TOL_AMP_MODEL = {'meme': (5e-2, 5e-2)}
TOL_COMPILE = 1e-4                   # |compiled - eager| / |eager|, same weights, batch and noise
TOL_DDP = 1e-6                       # max |grad DDP - grad bare| / max |grad bare| at world size 1

PLANS = {  # step counts: on a GPU, and in the CPU dry run
    'cuda': dict(amp_steps=20, amp_batch_cap=None, batch_cap=None, K_cap=None, tp_warmup=5, tp_steps=30, tp_variants=('fp32', 'bf16'),
                 iwae_n=1000, iwae_batch=100, iwae_K=1000, iwae_runs=3, compile_warmup=3, compile_steps=20,
                 ddp_n=1024, ddp_batch=128, ddp_K=4),
    'dry': dict(amp_steps=2, amp_batch_cap=8, batch_cap=2, K_cap=2, tp_warmup=1, tp_steps=1, tp_variants=('fp32',),
                iwae_n=2, iwae_batch=2, iwae_K=100, iwae_runs=1, compile_warmup=0, compile_steps=0,
                ddp_n=32, ddp_batch=16, ddp_K=1),
}
T0 = time.perf_counter()
T0_WALL = time.time()                # the run's start; a section's child process is given the parent's (--t0)
LOG_PATH: Path | None = None


def log(msg: str):
    "Print a progress line with the time of day and the seconds since the start (and append it to the log file)."
    line = f"[{datetime.now():%H:%M:%S} +{time.time() - T0_WALL:6.1f}s] {msg}"
    print(line, flush=True)
    if LOG_PATH is not None:
        with open(LOG_PATH, 'a') as f: f.write(line + '\n')


class Ctx:
    "What every section gets: dry run or not, the device, the folders, the step counts, its deadline."
    def __init__(self, dry: bool, out: Path, work: Path, data_root=None, threads: int | None = None, device=None):
        self.dry, self.out, self.work, self.data_root, self.threads = dry, out, work, data_root, threads
        self.device = torch.device(device or ('cpu' if dry else 'cuda'))
        self.plan = PLANS['dry' if dry else 'cuda']
        self.deadline = math.inf

    def time_left(self) -> float: return self.deadline - time.perf_counter()


def check_row(name: str, ok: bool, detail: str = '') -> dict: return {'name': name, 'ok': bool(ok), 'detail': detail}


def rel(a: float, b: float) -> float:
    "|a - b| / |b| (inf when either is not finite)."
    if not (math.isfinite(a) and math.isfinite(b)): return math.inf
    return abs(a - b) / max(abs(b), 1e-12)


def quiet(cfg):
    "The config with progress bars, epoch lines and TensorBoard off (the check prints its own lines)."
    return cfg.replace(progress=False, verbose=False, tensorboard=False)


def adapt(cfg, plan: dict):
    "The config at the plan's scale: batch size and K capped in the dry run, unchanged on a GPU."
    ch = {}
    if plan['batch_cap']: ch.update(batch_size=min(cfg.batch_size, plan['batch_cap']), eval_batch_size=min(cfg.eval_batch_size, plan['batch_cap']))
    if plan['K_cap'] and cfg.K: ch['K'] = min(cfg.K, plan['K_cap'])
    return cfg.replace(**ch) if ch else cfg


def _import_papers() -> str:
    "Import `mmvae_nb.papers` (the papers' experiment registrations) when it exists; a note when it fails."
    try:
        import mmvae_nb.papers  # noqa: F401
        return 'mmvae_nb.papers imported'
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith('mmvae_nb.papers'): return 'no mmvae_nb.papers package (registry: mmvae_nb.experiments)'
        return f'mmvae_nb.papers failed to import: {e}'
    except Exception as e: return f'mmvae_nb.papers failed to import: {type(e).__name__}: {e}'


def discover_models() -> list:
    "(model key, config, where the config is from) for every model the registry knows, each with its first paper config."
    from mmvae_nb import experiments as E
    _import_papers()
    keys = list(E.MODELS) + [c.model for e in E.EXPERIMENTS.values() for c in e.configs.values() if isinstance(c.model, str)]
    out = []
    for k in dict.fromkeys(keys):
        found = next(((f'{n} (paper)', e.configs['paper']) for n, e in E.EXPERIMENTS.items()
                      if 'paper' in e.configs and e.configs['paper'].model == k), None)
        found = found or next(((f'{n} ({s})', c) for n, e in E.EXPERIMENTS.items() for s, c in e.configs.items() if c.model == k), None)
        found = found or ('default MNIST-SVHN config', E.ExperimentConfig(model=k, dataset='mnist_svhn', modality_kwargs={'weight': 'mmvae'}))
        out.append((k, found[1], found[0]))
    return out


# --- cuda_tests --------------------------------------------------------------------------------------------
def cuda_test_files() -> list:
    "Test files that mark a test (or the module) `cuda`."
    return sorted(str(p) for p in (ROOT / 'tests').glob('test_*.py') if re.search(r'\bmark\.cuda\b', p.read_text()))


def parse_junit(path) -> list:
    "[{'test', 'outcome', 'message'}] from a pytest JUnit XML file."
    out = []
    for tc in ET.parse(path).getroot().iter('testcase'):
        outcome, msg = 'passed', ''
        for tag in ('failure', 'error', 'skipped'):
            el = tc.find(tag)
            if el is not None: outcome, msg = {'failure': 'failed'}.get(tag, tag), (el.get('message') or '')[:300]; break
        out.append({'test': f"{tc.get('classname')}::{tc.get('name')}", 'outcome': outcome, 'message': msg})
    return out


def sec_cuda_tests(ctx: Ctx) -> dict:
    import pytest
    files = cuda_test_files()
    if not files: return {'status': 'failed', 'summary': 'no test carries the cuda marker', 'checks': [check_row('cuda tests found', False)]}
    junit = ctx.work / 'cuda_tests.xml'
    args = ['-q', '-m', 'cuda', '-p', 'no:cacheprovider', '--rootdir', str(ROOT), '-c', str(ROOT / 'pyproject.toml'),
            f'--junitxml={junit}', *files]
    log(f"cuda_tests: pytest {' '.join(args)}")
    rc = int(pytest.main(args))
    tests = parse_junit(junit) if junit.exists() else []
    counts = {k: sum(t['outcome'] == k for t in tests) for k in ('passed', 'failed', 'error', 'skipped')}
    checks = [check_row('collected', len(tests) > 0, f"{len(tests)} tests in {len(files)} files (pytest exit status {rc})")]
    checks += [check_row(t['test'], t['outcome'] == 'passed' or (ctx.dry and t['outcome'] == 'skipped'), t['outcome'] + (f": {t['message']}" if t['message'] else ''))
               for t in tests]
    res = {'rows': tests, 'counts': counts, 'checks': checks, 'pytest_exit_status': rc,
           'summary': ', '.join(f"{v} {k}" for k, v in counts.items() if v) or 'none collected'}
    if ctx.dry and tests and counts['skipped'] == len(tests):
        res.update(status='skipped', summary=res['summary'] + ' (no CUDA: dry run)')
    return res


# --- amp ---------------------------------------------------------------------------------------------------
def amp_one(key: str, cfg, source: str, ctx: Ctx) -> dict:
    "Train the same weights S steps on one batch in fp32 and in AMP bf16; the losses of both."
    from mmvae_nb.core import seed_everything
    from mmvae_nb.experiments import build_model, make_iterator
    from mmvae_nb.train import Trainer
    cfg = adapt(cfg, {**ctx.plan, 'batch_cap': ctx.plan['amp_batch_cap']})
    specs, _, _ = bl.nominal_data(cfg)
    B, dev = cfg.batch_size, ctx.device
    ds = bl.random_like(specs, B, seed=0)
    batch = ds.batch(torch.arange(B), device=dev)
    seed_everything(0)
    model0 = build_model(cfg, specs)
    state = copy.deepcopy(model0.state_dict())
    row = {'model': key, 'class': type(model0).__name__, 'config': source, 'batch': B, 'K': cfg.K, 'steps': ctx.plan['amp_steps']}
    for prec in ('fp32', 'bf16'):
        m = build_model(cfg, specs); m.load_state_dict(state); m.to(dev)
        tr = Trainer(m, make_iterator(ds, cfg, True, dev), quiet(cfg).replace(amp=prec == 'bf16'))
        if prec == 'bf16':
            if dev.type == 'cpu': tr.amp_dtype = torch.bfloat16     # the Trainer's AMP is CUDA-only: the dry run autocasts the CPU
            elif tr.amp_dtype != torch.bfloat16: raise RuntimeError(f"the Trainer chose {tr.amp_dtype} for AMP on this GPU, not bf16")
        seed_everything(1)
        losses, err = [], None
        t0 = time.perf_counter()
        try:
            for _ in range(ctx.plan['amp_steps']): losses.append(tr.train_step(batch))
        except Exception as e: err = f"{type(e).__name__}: {str(e)[:400]}"
        bl.synchronize(dev)
        row[prec] = {'losses': losses, 'error': err, 'ms_step': (time.perf_counter() - t0) / max(len(losses), 1) * 1e3}
    f, b = row['fp32']['losses'], row['bf16']['losses']
    n = min(len(f), len(b))
    row['finite'] = bool(n == ctx.plan['amp_steps'] and all(map(math.isfinite, f + b)))
    row['rel_first'] = rel(b[0], f[0]) if n else math.inf
    row['rel_last'] = rel(b[n - 1], f[n - 1]) if n else math.inf
    return row


def sec_amp(ctx: Ctx) -> dict:
    rows, checks = [], []
    for key, cfg, source in discover_models():
        if ctx.time_left() < 5:
            rows.append({'model': key, 'config': source, 'error': 'not run: the section budget was spent'})
            checks.append(check_row(f'amp {key}', False, 'not run (budget)')); continue
        log(f"amp: {key} ({source})")
        try: row = amp_one(key, cfg, source, ctx)
        except Exception as e: row = {'model': key, 'config': source, 'error': f"{type(e).__name__}: {str(e)[:400]}"}
        err = row.get('error') or row.get('fp32', {}).get('error') or row.get('bf16', {}).get('error')
        tol_first, tol_last = TOL_AMP_MODEL.get(key, (TOL_FIRST, TOL_LAST))
        ok = err is None and row.get('finite') and row['rel_first'] <= tol_first and row['rel_last'] <= tol_last
        detail = err or f"rel. diff first {row['rel_first']:.2e}, last {row['rel_last']:.2e} (tolerance {tol_first:g} / {tol_last:g})"
        rows.append(row); checks.append(check_row(f'amp {key}', ok, detail))
        log(f"amp: {key}: {'ok' if ok else 'FAILED'} ({detail})")
    n_ok = sum(c['ok'] for c in checks)
    note = ' (dry run: autocast on the CPU)' if ctx.dry else ''
    return {'rows': rows, 'checks': checks, 'tolerance': {'first': TOL_FIRST, 'last': TOL_LAST},
            'summary': f"{n_ok}/{len(checks)} models agree within {TOL_FIRST:g} (first step) / {TOL_LAST:g} (last){note}"}


# --- paper_throughput --------------------------------------------------------------------------------------
def throughput_one(name: str, cfg, ctx: Ctx) -> dict:
    "Samples/s of `cfg`'s training step (Trainer, synchronised) and the projected time of its full run."
    from mmvae_nb.experiments import load_data
    specs, n_train, src = bl.nominal_data(cfg)
    data_note, real = f"random data of the dataset's shapes; size from {src}", None
    if ctx.data_root:
        try:
            real = load_data(cfg, ctx.data_root)['train']
            specs, n_train, data_note = real.specs, len(real), 'real data'
        except (FileNotFoundError, ValueError) as e: data_note += f" (real data unavailable: {str(e)[:120]})"
    run = adapt(cfg, ctx.plan)
    W, S, B, dev = ctx.plan['tp_warmup'], ctx.plan['tp_steps'], run.batch_size, ctx.device
    N = B * (W + S)
    ds = real.subset(torch.arange(min(N, len(real)))) if real is not None else bl.random_like(specs, N, seed=cfg.seed)
    row = {'experiment': name, 'model': cfg.model, 'batch': B, 'paper_batch': cfg.batch_size, 'K': run.K, 'n_train': n_train,
           'epochs': cfg.epochs, 'steps_per_epoch': -(-n_train // cfg.batch_size), 'data': data_note}
    row['total_steps'] = row['steps_per_epoch'] * cfg.epochs
    for variant in ctx.plan['tp_variants']:
        try: row[variant] = _time_steps(run, specs, ds, variant == 'bf16', W, S, dev)
        except Exception as e:
            if variant == 'fp32': raise
            row[variant] = {'error': f"{type(e).__name__}: {str(e)[:300]}"}        # AMP's own section says more
        if not ctx.dry and B == cfg.batch_size and 'samples_s' in row[variant]:
            row[variant]['projected_h'] = row['total_steps'] * row[variant]['ms_step'] / 1e3 / 3600
        if dev.type == 'cuda': torch.cuda.empty_cache()
    return row


def _time_steps(cfg, specs, ds, amp: bool, W: int, S: int, dev) -> dict:
    "W warm-up then S timed Trainer steps of `cfg`'s model over `ds`; samples/s, ms/step (and peak GPU memory)."
    from mmvae_nb.core import seed_everything
    from mmvae_nb.experiments import build_model, make_iterator
    from mmvae_nb.train import Trainer
    seed_everything(cfg.seed)
    model = build_model(cfg, specs).to(dev)
    it = make_iterator(ds, cfg, True, dev)
    tr = Trainer(model, it, quiet(cfg).replace(amp=amp))
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    done, t0 = 0, time.perf_counter()
    for batch in it:
        if done == W: bl.synchronize(dev); t0 = time.perf_counter()
        tr.train_step(batch); done += 1
        if done == W + S: break
    bl.synchronize(dev)
    dt, timed = time.perf_counter() - t0, done - W
    r = {'samples_s': timed * cfg.batch_size / dt, 'ms_step': dt / timed * 1e3, 'steps_timed': timed}
    if dev.type == 'cuda': r['peak_mem_gb'] = torch.cuda.max_memory_allocated(dev) / 2**30
    return r


def sec_paper_throughput(ctx: Ctx) -> dict:
    from mmvae_nb.experiments import EXPERIMENTS
    note = _import_papers()
    rows, checks = [], []
    for name, exp in EXPERIMENTS.items():
        cfg = exp.configs.get('paper')
        if cfg is None: continue      # e.g. the neutral 'custom' experiment: nothing to project
        if ctx.time_left() < 5:
            rows.append({'experiment': name, 'model': cfg.model, 'error': 'not run: the section budget was spent'})
            checks.append(check_row(f'throughput {name}', False, 'not run (budget)')); continue
        log(f"paper_throughput: {name} ({cfg.model}, batch {cfg.batch_size}, K={cfg.K})")
        try: row = throughput_one(name, cfg, ctx)
        except Exception as e: row = {'experiment': name, 'model': cfg.model, 'error': f"{type(e).__name__}: {str(e)[:400]}"}
        rows.append(row); checks.append(check_row(f'throughput {name}', 'error' not in row, row.get('error', '')))
        if 'fp32' in row:
            log(f"paper_throughput: {name}: " + ', '.join(f"{v} " + (f"{row[v]['samples_s']:.1f} samples/s" if 'samples_s' in row[v] else row[v]['error'])
                                                         for v in ctx.plan['tp_variants'] if v in row))
        else: log(f"paper_throughput: {name}: FAILED ({row['error']})")
    n_ok = sum(c['ok'] for c in checks)
    return {'rows': rows, 'checks': checks, 'registry': note,
            'summary': f"{n_ok}/{len(checks)} paper configs timed" + (' (dry run: tiny batches on the CPU, no projection)' if ctx.dry else '')}


# --- iwae --------------------------------------------------------------------------------------------------
def sec_iwae(ctx: Ctx) -> dict:
    from mmvae_nb.likelihoods import default_chunk
    p, dev = ctx.plan, ctx.device
    torch.manual_seed(0)
    model, what = bl.build_iwae_model()
    model = model.to(dev).eval()
    batches = bl.random_pair_batches(p['iwae_n'], p['iwae_batch'], dev)
    chunk = default_chunk(model, p['iwae_batch'])
    log(f"iwae: {what}; {p['iwae_n']} random pairs, K={p['iwae_K']}, batch {p['iwae_batch']}, chunk {chunk}")
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    runs = bl.time_iwae(model, batches, p['iwae_K'], chunk, p['iwae_runs'], dev, torch.get_num_threads(), log=lambda m: log('iwae: ' + m))
    rates = [r['items_s'] for r in runs]
    row = {'model': what, 'K': p['iwae_K'], 'n': p['iwae_n'], 'batch': p['iwae_batch'], 'chunk': chunk,
           'items_s_best': max(rates), 'items_s_median': statistics.median(rates), 'runs': runs}
    if dev.type == 'cuda':
        row['peak_mem_gb'] = torch.cuda.max_memory_allocated(dev) / 2**30
        row['minutes_10k_pairs'] = 1e4 / max(rates) / 60
    finite = all(r['finite'] for r in runs)
    return {'rows': [row], 'checks': [check_row('iwae finite', finite, f"mean log p(x) {runs[-1]['mean_ll']:.1f}")],
            'summary': f"{max(rates):.1f} items/s at K={p['iwae_K']}" + (' (dry run: CPU, not the GPU rate)' if ctx.dry else '')}


# --- ddp ---------------------------------------------------------------------------------------------------
def ddp_probe(device: str, backend: str, in_process: bool) -> dict:
    "Join a process group (world size 1), compare DDP's gradients of MMVAE's loss with the bare model's, run collectives."
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from mmvae_nb.core import seed_everything
    from mmvae_nb.train import init_distributed, LossModule
    info = {'env_world_size': os.environ.get('WORLD_SIZE'), 'env_local_rank': os.environ.get('LOCAL_RANK')}
    rank, ws, dev = init_distributed(device)
    if dev.type == 'cuda' and dev.index is None: dev = torch.device('cuda', torch.cuda.current_device())
    info.update(library_initialised_group=dist.is_initialized(), library_device=str(dev), library_world_size=ws)
    if not dist.is_initialized():     # train.init_distributed joins a group only when WORLD_SIZE > 1
        if dev.type == 'cuda': torch.cuda.set_device(dev)
        if in_process: dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else: dist.init_process_group(backend)                                  # env:// from torchrun
    try:
        info.update(backend=str(dist.get_backend()), world_size=dist.get_world_size())
        torch.manual_seed(0)
        model, _ = bl.build_iwae_model()
        ref = copy.deepcopy(model).to(dev)
        ddp = DDP(LossModule(model).to(dev), device_ids=[dev.index] if dev.type == 'cuda' else None, find_unused_parameters=True)
        batch = bl.random_pair_batches(8, 8, dev)[0]
        seed_everything(0); l_ddp = ddp(batch)[0]; l_ddp.backward()
        seed_everything(0); l_ref = ref.loss(batch)[0]; l_ref.backward()
        gd = [(p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), ref.parameters()) if q.grad is not None]
        gmax = max(q.grad.abs().max().item() for q in ref.parameters() if q.grad is not None)
        t = torch.full((3,), 2.0, device=dev); dist.all_reduce(t)
        objs = [None]; dist.all_gather_object(objs, {'rank': dist.get_rank()})
        dist.barrier()
        info.update(loss_ddp=l_ddp.item(), loss_ref=l_ref.item(), grad_rel_diff=max(gd) / max(gmax, 1e-30),
                    all_reduce=t.tolist(), all_gather_object=objs)
    finally: dist.destroy_process_group()
    return info


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _sub_env(ctx: Ctx) -> dict:
    pp = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])
    env = {**os.environ, 'PYTHONPATH': pp, 'PYTHONUNBUFFERED': '1', 'MMVAE_NB_CACHE': os.environ.get('MMVAE_NB_CACHE', str(ctx.work / 'cache'))}
    # one machine, one process: the group's bootstrap needs no network interface but loopback
    for k in ('NCCL_SOCKET_IFNAME', 'GLOO_SOCKET_IFNAME'): env.setdefault(k, 'lo')
    env.setdefault('NCCL_DEBUG', 'WARN')
    if ctx.dry: env['OMP_NUM_THREADS'] = '1'
    return env


def _run(cmd: list, ctx: Ctx, timeout: float) -> tuple:
    "(exit status, stdout + stderr) of a subprocess in the repository root; status 124 when it ran past `timeout`."
    log('ddp: ' + ' '.join(map(str, cmd)))
    try:
        r = subprocess.run(list(map(str, cmd)), cwd=ROOT, env=_sub_env(ctx), capture_output=True, text=True, timeout=max(timeout, 5))
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        got = e.stdout or b''                           # bytes whatever text= says
        return 124, f"timed out after {timeout:.0f} s\n" + (got.decode(errors='replace') if isinstance(got, bytes) else got)[-2000:]


def ddp_config(ctx: Ctx):
    "A small MMVAE MNIST-SVHN run on random data (`bench.benchlib:random_dataset`), checkpoints every 2 steps."
    from mmvae_nb.experiments import EXPERIMENTS, ExperimentConfig
    from mmvae_nb.papers.mmvae import MMVAE_PAPER
    p = ctx.plan
    base = EXPERIMENTS['mmvae_mnist_svhn'].configs['paper'] if 'mmvae_mnist_svhn' in EXPERIMENTS else ExperimentConfig(**MMVAE_PAPER)
    return base.replace(name='gpu_check_ddp', scale='custom', reduction='', dataset='bench.benchlib:random_dataset',
                        dataset_kwargs={'like': 'mnist_svhn'}, n_train=p['ddp_n'], n_test=2 * p['ddp_batch'],
                        batch_size=p['ddp_batch'], eval_batch_size=p['ddp_batch'], K=p['ddp_K'], epochs=1, ckpt_every=2,
                        progress=False, tensorboard=False)


def sec_ddp(ctx: Ctx) -> dict:
    from mmvae_nb.train import CheckpointManager
    cfg = ddp_config(ctx)
    cfg_path, run_dir = ctx.work / 'ddp_config.json', ctx.work / 'ddp_run'
    cfg.save(cfg_path)
    steps_epoch = -(-cfg.n_train // cfg.batch_size)
    checks, notes, info = [], [], {}
    dev = ctx.device.type
    launch = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--master_addr', '127.0.0.1']
    train = ['train', '--config', cfg_path, '--out', run_dir, '--device', dev, '--no-progress']
    if ctx.dry:
        notes.append('dry run: no torchrun launch (each would import torch twice); the probe joins a gloo group in-process '
                     'and the CLI train/resume runs in-process on the CPU')
        info = ddp_probe('cpu', 'gloo', in_process=True)
        from mmvae_nb.cli import main as cli_main
        outs = []
        for argv in (train, train + ['--resume', '--set', 'epochs=2']):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf): rc = cli_main(list(map(str, argv)))
            outs.append((rc, buf.getvalue()))
    else:
        probe_json = ctx.work / 'ddp_probe.json'
        rc, out = _run(launch + ['--master_port', _free_port(), str(Path(__file__).resolve()), '--ddp-probe', probe_json, '--device', dev],
                       ctx, min(40, ctx.time_left() / 3))
        if probe_json.exists(): info = json.loads(probe_json.read_text())
        else: checks.append(check_row('probe ran', False, f"exit status {rc}: {out[-1500:]}"))
        outs = []
        for extra in ([], ['--resume', '--set', 'epochs=2']):
            outs.append(_run(launch + ['--master_port', _free_port(), '-m', 'mmvae_nb.cli'] + train + extra, ctx,
                             ctx.time_left() / (2 if not extra else 1) - 1))
    if info:
        want = 'nccl' if dev == 'cuda' else 'gloo'
        checks.append(check_row(f'{want} group', info.get('backend') == want and info.get('world_size') == 1,
                                f"backend {info.get('backend')}, world size {info.get('world_size')}"))
        checks.append(check_row('DDP gradients = bare model', info.get('grad_rel_diff', math.inf) <= TOL_DDP,
                                f"max rel. diff {info.get('grad_rel_diff', float('nan')):.1e}; loss {info.get('loss_ddp', float('nan')):.6g} "
                                f"vs {info.get('loss_ref', float('nan')):.6g}"))
        checks.append(check_row('all_reduce, all_gather_object', info.get('all_reduce') == [2.0] * 3 and bool(info.get('all_gather_object')),
                                str(info.get('all_reduce'))))
        if not info.get('library_initialised_group'):
            notes.append('at world size 1 mmvae_nb.train.init_distributed joins no process group and the Trainer does not wrap '
                         'the model in DDP, so the CLI train/resume checks run without NCCL; the probe exercises NCCL and DDP directly')
    (rc1, out1), (rc2, out2) = outs
    checks.append(check_row('CLI train', rc1 == 0, f"exit status {rc1}" + ('' if rc1 == 0 else f": {out1[-1500:]}")))
    ck = CheckpointManager(run_dir / 'checkpoints', writer=False)
    checks.append(check_row('checkpoints written', len(ck.paths()) > 0, ', '.join(p.name for p in ck.paths())))
    resumed = 'resumed from' in out2
    _, state = ck.load_latest()
    step = state['step'] if state else None
    checks.append(check_row('CLI resume to epoch 2', rc2 == 0 and resumed and step == 2 * steps_epoch and len(state['history']) == 2,
                            f"exit status {rc2}, {'resumed' if resumed else 'NOT resumed'}, final step {step} (want {2 * steps_epoch})"
                            + ('' if rc2 == 0 else f": {out2[-1500:]}")))
    n_ok = sum(c['ok'] for c in checks)
    return {'rows': [info], 'checks': checks, 'notes': notes, 'config': cfg.to_dict(),
            'summary': f"{n_ok}/{len(checks)} checks passed" + (' (dry run: gloo in-process, no torchrun)' if ctx.dry else '')}


# --- compile -----------------------------------------------------------------------------------------------
def sec_compile(ctx: Ctx) -> dict:
    if ctx.dry:
        return {'status': 'skipped', 'checks': [], 'summary': 'skipped in the dry run (tracing alone takes ~8 s on a 2-core CPU, '
                                                              'inductor minutes)'}
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters
    from mmvae_nb.core import seed_everything
    from mmvae_nb.experiments import EXPERIMENTS, build_model, make_iterator
    from mmvae_nb.train import Trainer
    name = 'mmvae_mnist_svhn' if 'mmvae_mnist_svhn' in EXPERIMENTS else next(iter(EXPERIMENTS))
    cfg = quiet(EXPERIMENTS[name].configs['paper'])
    specs, _, _ = bl.nominal_data(cfg)
    dev, W, S, B = ctx.device, ctx.plan['compile_warmup'], ctx.plan['compile_steps'], cfg.batch_size
    inductor_config.fallback_random = True       # the compiled graph draws the same noise as eager: equal values
    counters.clear()
    ds = bl.random_like(specs, B, seed=0)
    batch = ds.batch(torch.arange(B), device=dev)
    seed_everything(0)
    m_eager = build_model(cfg, specs).to(dev)
    m_comp = copy.deepcopy(m_eager)
    tr_e = Trainer(m_eager, make_iterator(ds, cfg, True, dev), cfg)
    tr_c = Trainer(m_comp, make_iterator(ds, cfg, True, dev), cfg.replace(compile=True))
    seed_everything(3); v_e = tr_e.loss_fn(batch)[0].item()
    log(f"compile: {name} ({cfg.model}, batch {B}, K={cfg.K}); eager loss {v_e:.6g}; compiling the forward ...")
    t0 = time.perf_counter(); seed_everything(3); v_c = tr_c.loss_fn(batch)[0].item(); t_fwd = time.perf_counter() - t0
    log(f"compile: forward compiled in {t_fwd:.1f} s, loss {v_c:.6g}; first training step (backward compile) ...")
    t0 = time.perf_counter(); tr_c.train_step(batch); bl.synchronize(dev); t_step1 = time.perf_counter() - t0
    times = {}
    for label, tr in (('eager', tr_e), ('compiled', tr_c)):
        for _ in range(W): tr.train_step(batch)
        bl.synchronize(dev); t0 = time.perf_counter()
        for _ in range(S): tr.train_step(batch)
        bl.synchronize(dev); times[label] = (time.perf_counter() - t0) / S * 1e3
    breaks = int(sum(counters['graph_break'].values()))
    row = {'experiment': name, 'model': cfg.model, 'batch': B, 'K': cfg.K, 'loss_eager': v_e, 'loss_compiled': v_c,
           'rel_diff': rel(v_c, v_e), 'compile_forward_s': t_fwd, 'first_step_s': t_step1, 'ms_step_eager': times['eager'],
           'ms_step_compiled': times['compiled'], 'speedup': times['eager'] / times['compiled'], 'graph_breaks': breaks,
           'graph_break_reasons': [k.split('\n')[0][:160] for k in counters['graph_break']]}
    ok = row['rel_diff'] <= TOL_COMPILE
    return {'rows': [row], 'checks': [check_row('compiled loss = eager', ok, f"rel. diff {row['rel_diff']:.1e} (tolerance {TOL_COMPILE:g})")],
            'summary': f"compile {t_fwd + t_step1:.0f} s, speed-up {row['speedup']:.2f}x, {breaks} graph breaks"}


SECTION_FUNCS = {'cuda_tests': sec_cuda_tests, 'amp': sec_amp, 'paper_throughput': sec_paper_throughput, 'iwae': sec_iwae,
                 'ddp': sec_ddp, 'compile': sec_compile}


# --- running sections --------------------------------------------------------------------------------------
def run_here(name: str, ctx: Ctx, budget: float) -> dict:
    "Run section `name` in this process; an exception becomes a failed section with its error."
    t0 = time.perf_counter()
    ctx.deadline = t0 + budget - 5 if not ctx.dry else math.inf
    try:
        res = SECTION_FUNCS[name](ctx)
        res.setdefault('status', 'failed' if any(not c['ok'] for c in res.get('checks', [])) else 'ok')
    except Exception as e:
        res = {'status': 'failed', 'error': f"{type(e).__name__}: {e}", 'traceback': traceback.format_exc()[-4000:],
               'summary': f"error: {type(e).__name__}: {str(e)[:200]}"}
    res['seconds'] = round(time.perf_counter() - t0, 2)
    return res


def run_isolated(name: str, ctx: Ctx, budget: float, argv_common: list) -> dict:
    "Run section `name` in a child process (its own CUDA context), killed at `budget` seconds."
    res_path, err_path = ctx.work / f'{name}.result.json', ctx.work / f'{name}.stderr'
    cmd = [sys.executable, str(Path(__file__).resolve()), '--section', name, '--result', str(res_path),
           '--section-budget-s', str(budget - 10), '--t0', repr(T0_WALL)] + argv_common
    t0 = time.perf_counter()
    with open(err_path, 'w') as ferr:
        p = subprocess.Popen(cmd, stderr=ferr, start_new_session=True, env=_sub_env(ctx), cwd=ROOT)
        try: rc = p.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL); p.wait(); rc = None
    secs = round(time.perf_counter() - t0, 2)
    tail = err_path.read_text()[-3000:] if err_path.exists() else ''
    if res_path.exists():
        res = json.loads(res_path.read_text())
        if rc != 0 and res.get('status') != 'failed': res.update(status='failed', error=f"section process exited with status {rc}")
    elif rc is None: res = {'status': 'failed', 'error': f"ran past its budget of {budget:.0f} s and was killed", 'stderr_tail': tail}
    else: res = {'status': 'failed', 'error': f"section process exited with status {rc} without a result", 'stderr_tail': tail}
    res.setdefault('summary', res.get('error', ''))
    res['seconds'] = secs
    return res


def machine_info(ctx: Ctx) -> dict:
    info = {'date_utc': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), 'host': platform.node(),
            'python': platform.python_version(), 'torch': torch.__version__, 'dry_run': ctx.dry, 'device': str(ctx.device),
            'cuda_available': torch.cuda.is_available(), 'cpu_threads': torch.get_num_threads()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), capability='.'.join(map(str, torch.cuda.get_device_capability(0))),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
    try: info['git_commit'] = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception: pass
    return info


# --- the table ---------------------------------------------------------------------------------------------
def _f(x, fmt='.4g', none='—') -> str:
    if x is None: return none
    if isinstance(x, float) and not math.isfinite(x): return str(x)
    return format(x, fmt)


def _table(header: list, rows: list) -> list:
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]


def _hours(h) -> str:
    if h is None: return 'not measured'
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def markdown(results: dict) -> str:
    "The Markdown report: the summary per section, then each section's table."
    meta, secs = results['meta'], results['sections']
    dry = meta['dry_run']
    where = (f"**DRY RUN** on the CPU ({meta['host']}, torch {meta['torch']}): tiny step counts, the CUDA-only parts skipped. "
             "No number below is a GPU measurement and none is a projection.") if dry else \
        (f"{meta.get('gpu')} (capability {meta.get('capability')}, {meta.get('gpu_memory_gb')} GiB), torch {meta['torch']}, "
         f"CUDA {meta.get('cuda')}, cuDNN {meta.get('cudnn')}")
    L = [f"# GPU check — {meta['date_utc']}", '', where, '',
         f"Overall: **{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}**; {results['seconds']:.0f} s in all "
         f"(budget {results['budget_s']} s).", '']
    budgets = {n: b for n, b, _ in SECTIONS}
    L += _table(['section', 'what', 'status', 'time (s)', 'GPU budget (s)', 'result'],
                [[n, t, secs[n]['status'] if n in secs else 'not run', _f(secs.get(n, {}).get('seconds'), '.1f'), budgets[n],
                  (secs.get(n, {}).get('summary') or '').replace('|', '/')] for n, _, t in SECTIONS])
    for n in secs:
        if secs[n].get('error'): L += ['', f"`{n}` error: `{secs[n]['error'][:600]}`"]
    s = secs.get('amp')
    if s and s.get('rows'):
        L += ['', f"## AMP bf16 vs fp32 (tolerance: relative loss difference <= {TOL_FIRST:g} at the first step, "
                  f"<= {TOL_LAST:g} at the last, {TOL_AMP_MODEL} for the models named; same weights, batch and seed)", '']
        rows = []
        for r in s['rows']:
            f32, b16 = r.get('fp32', {}), r.get('bf16', {})
            fl, bl_ = f32.get('losses') or [], b16.get('losses') or []
            err = r.get('error') or f32.get('error') or b16.get('error')
            tf, tl = TOL_AMP_MODEL.get(r['model'], (TOL_FIRST, TOL_LAST))
            ok = not err and r.get('finite') and r['rel_first'] <= tf and r['rel_last'] <= tl
            rows.append([f"{r['model']} ({r.get('class', '?')})", r.get('config', ''), r.get('batch', ''), r.get('K') or '—',
                         f"{_f(fl[0] if fl else None)} → {_f(fl[-1] if fl else None)}", f"{_f(bl_[0] if bl_ else None)} → {_f(bl_[-1] if bl_ else None)}",
                         f"{_f(r.get('rel_first'), '.1e')} / {_f(r.get('rel_last'), '.1e')}",
                         f"{_f(f32.get('ms_step'), '.1f')} / {_f(b16.get('ms_step'), '.1f')}",
                         'ok' if ok else 'FAILED' + (f": {err[:160]}" if err else '')])
        L += _table(['model', 'config', 'batch', 'K', 'fp32 loss first → last', 'bf16 loss first → last', 'rel. diff first / last',
                     'ms/step fp32 / bf16', 'result'], [[str(c).replace('|', '/') for c in r] for r in rows])
        if dry: L += ['', 'Dry run: bf16 by `torch.autocast("cpu")` (the Trainer autocasts on CUDA only), batch <= 2, K <= 2, 2 steps.']
    s = secs.get('paper_throughput')
    if s and s.get('rows'):
        L += ['', "## Training throughput of each paper config (Trainer steps, synchronised; random data of the dataset's shapes)", '']
        rows = []
        for r in s['rows']:
            if 'error' in r or 'note' in r:
                rows.append([r['experiment'], r.get('model', ''), '', '', '', '', '', r.get('error') or r.get('note')]); continue
            f32, b16 = r.get('fp32', {}), r.get('bf16', {})
            rows.append([r['experiment'], r['model'], f"{r['batch']}" + ('' if r['batch'] == r['paper_batch'] else f" (paper {r['paper_batch']})"),
                         r.get('K') or '—', _f(f32.get('samples_s'), '.1f'),
                         ('error: ' + b16['error'][:120] if 'error' in b16 else _f(b16.get('samples_s'), '.1f')) if b16 else 'not run',
                         f"{r['steps_per_epoch']:,} x {r['epochs']} = {r['total_steps']:,}",
                         f"{_hours(f32.get('projected_h'))} (fp32), {_hours(b16.get('projected_h'))} (bf16)" if not dry else 'not a projection (dry run)'])
        L += _table(['experiment', 'model', 'batch', 'K', 'fp32 samples/s', 'bf16 samples/s', 'steps (per epoch x epochs)',
                     'projected training time'], [[str(c).replace('|', '/') for c in r] for r in rows])
        L += ['', 'Projected time = steps per epoch x epochs / measured steps per second: training only (no evaluation, no '
                  'data loading; the data sits on the device).']
    s = secs.get('iwae')
    if s and s.get('rows'):
        r = s['rows'][0]
        L += ['', '## IWAE evaluation (MMVAE MNIST-SVHN architecture, `metrics.iwae_log_likelihood`)', '']
        L += _table(['K', 'pairs', 'batch', 'chunk', 'items/s best', 'items/s median', '10,000 test pairs', 'peak GPU memory'],
                    [[r['K'], r['n'], r['batch'], r['chunk'], _f(r['items_s_best'], '.1f'), _f(r['items_s_median'], '.1f'),
                      f"{r['minutes_10k_pairs']:.1f} min" if 'minutes_10k_pairs' in r else 'not measured (dry run)',
                      f"{r['peak_mem_gb']:.1f} GiB" if 'peak_mem_gb' in r else '—']])
    s = secs.get('compile')
    if s and s.get('rows'):
        r = s['rows'][0]
        L += ['', f"## torch.compile (inductor, `fallback_random`), {r['experiment']} paper config", '']
        L += _table(['loss eager', 'loss compiled', 'rel. diff', 'forward compile (s)', 'first step (s)', 'ms/step eager',
                     'ms/step compiled', 'speed-up', 'graph breaks'],
                    [[_f(r['loss_eager'], '.7g'), _f(r['loss_compiled'], '.7g'), _f(r['rel_diff'], '.1e'), _f(r['compile_forward_s'], '.1f'),
                      _f(r['first_step_s'], '.1f'), _f(r['ms_step_eager'], '.2f'), _f(r['ms_step_compiled'], '.2f'),
                      f"{r['speedup']:.2f}x", r['graph_breaks']]])
    for n in ('ddp', 'cuda_tests'):
        s = secs.get(n)
        if s and s.get('checks'):
            L += ['', f"## {n}", ''] + _table(['check', 'result', 'detail'],
                                              [[c['name'], 'ok' if c['ok'] else 'FAILED', c['detail'][:300].replace('|', '/').replace('\n', ' ')]
                                               for c in s['checks']])
            L += [''] + [f"Note: {x}" for x in s.get('notes', [])]
    return '\n'.join(L).rstrip() + '\n'


def write_outputs(results: dict, out: Path):
    "gpu_check.json and gpu_check.md, each written whole (a reader never sees half a file)."
    from mmvae_nb.core import atomic_write
    with atomic_write(out / 'gpu_check.json', 'w') as f: json.dump(results, f, indent=1, default=str)
    with atomic_write(out / 'gpu_check.md', 'w') as f: f.write(markdown(results))


# --- main --------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='out/gpu_check', help='folder for gpu_check.json, gpu_check.md, gpu_check.log (default: %(default)s)')
    ap.add_argument('--dry-run', action='store_true', help='tiny step counts on the CPU; CUDA-only parts skipped (the default without CUDA)')
    ap.add_argument('--sections', default=','.join(n for n, _, _ in SECTIONS), help='comma-separated sections to run (default: all)')
    ap.add_argument('--budget-s', type=float, default=TOTAL_BUDGET_S, help='total time budget in seconds (default: %(default)s)')
    ap.add_argument('--isolate', choices=('auto', 'yes', 'no'), default='auto',
                    help="run each section in its own process ('auto': on a GPU, not in the dry run)")
    ap.add_argument('--data-root', help='use the real datasets under this folder for the throughput section where present')
    ap.add_argument('--threads', type=int, help='torch CPU threads (default: 1 in the dry run, torch\'s choice on a GPU)')
    ap.add_argument('--work', help='scratch folder (default: a temporary one)')
    ap.add_argument('--section', help=argparse.SUPPRESS)            # child mode: run one section, write --result
    ap.add_argument('--result', help=argparse.SUPPRESS)
    ap.add_argument('--section-budget-s', type=float, help=argparse.SUPPRESS)
    ap.add_argument('--t0', type=float, help=argparse.SUPPRESS)
    ap.add_argument('--ddp-probe', help=argparse.SUPPRESS)          # under torchrun: the NCCL probe, its JSON here
    ap.add_argument('--device', default='cuda', help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    global LOG_PATH, T0_WALL
    a = parse_args(argv)
    if a.t0: T0_WALL = a.t0
    if a.ddp_probe:                                                  # one torchrun worker
        info = ddp_probe(a.device, 'nccl' if a.device.startswith('cuda') else 'gloo', in_process=False)
        Path(a.ddp_probe).write_text(json.dumps(info, indent=1))
        return 0
    cuda = torch.cuda.is_available()
    dry = a.dry_run or not cuda
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    LOG_PATH = out / 'gpu_check.log'
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='gpu_check-'))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('MMVAE_NB_CACHE', str(work / 'cache'))     # nothing of the check lands in the user's cache
    threads = a.threads or (1 if dry else None)
    if threads: torch.set_num_threads(threads)
    ctx = Ctx(dry, out, work, a.data_root, threads)
    if a.section:                                                    # child mode (run_isolated)
        res = run_here(a.section, ctx, a.section_budget_s or 60)
        Path(a.result).write_text(json.dumps(res, indent=1, default=str))
        return 0
    LOG_PATH.write_text('')
    names = [n for n in a.sections.split(',') if n]
    unknown = sorted(set(names) - set(SECTION_FUNCS))
    if unknown: print(f"unknown sections {unknown}; known: {list(SECTION_FUNCS)}", file=sys.stderr); return 2
    if not cuda and not a.dry_run: log("no CUDA device here: running the dry run (tiny steps on the CPU, CUDA parts skipped)")
    isolate = a.isolate == 'yes' or (a.isolate == 'auto' and not dry)
    common = ['--out', str(out), '--work', str(work)] + (['--dry-run'] if dry else []) + \
             (['--data-root', a.data_root] if a.data_root else []) + (['--threads', str(threads)] if threads else [])
    results = {'meta': machine_info(ctx), 'budget_s': a.budget_s, 'ok': False, 'seconds': 0.0, 'sections': {},
               'tolerances': {'amp_first': TOL_FIRST, 'amp_last': TOL_LAST, 'compile': TOL_COMPILE, 'ddp_grad': TOL_DDP},
               'section_budgets_s': {n: b for n, b, _ in SECTIONS}, 'work': str(work)}
    log(f"gpu_check: {'DRY RUN on the CPU' if dry else results['meta'].get('gpu')}; sections {names}; "
        f"{'each in its own process' if isolate else 'in this process'}; budget {a.budget_s:.0f} s; out {out}")
    budgets = {n: b for n, b, _ in SECTIONS}
    for name in names:
        left = a.budget_s - (time.perf_counter() - T0)
        budget = min(budgets[name], left - 2)
        if not dry and budget < 15:
            res = {'status': 'failed', 'summary': f"not run: {left:.0f} s of the total budget left", 'seconds': 0.0}
        else:
            log(f"== {name}: {dict((n, t) for n, _, t in SECTIONS)[name]} (budget {budgets[name]} s on a GPU)")
            res = run_isolated(name, ctx, budget, common) if isolate else run_here(name, ctx, budget)
        res['budget_s'] = budgets[name]
        results['sections'][name] = res
        log(f"== {name}: {res['status']} in {res['seconds']:.1f} s: {res.get('summary', '')}")
        results['seconds'] = round(time.perf_counter() - T0, 1)
        results['ok'] = all(r['status'] != 'failed' for r in results['sections'].values())
        write_outputs(results, out)
    log(f"gpu_check: {'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'} in {results['seconds']:.0f} s; "
        f"{out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
    if not a.work: shutil.rmtree(work, ignore_errors=True)         # a temporary scratch folder; --work keeps it
    return 0 if results['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
