"""Time the IWAE-1000 log-likelihood on MMVAE's MNIST-SVHN architecture.

Model: `mmvae_nb.mmvae.MMVAE.from_specs` on the MNIST (1x28x28, arch 'mnist_mlp') and SVHN (3x32x32,
arch 'svhn_cnn') specs, latent 20, Laplace posteriors, learnable prior, MMVAE's lambda weights. If that
module is missing, a stand-in with the same networks (`build_modalities`) and a uniform mixture of the
unimodal posteriors (MMVAE's joint posterior) is used, and the output says so. Weights are untrained
and the pairs are uniform random images: the cost of the estimate does not depend on either.
The model, the data and the timing loop live in `bench/benchlib.py` (shared with `bench/gpu_check.py`).

Prints, for each run: wall time, items/s on the wall clock, items/s from CPU time (CPU seconds divided
by the thread count: what an otherwise idle machine would show when other processes share the cores),
then the best and median over runs, the peak resident memory of the process, and the extrapolated time
for the 10,000 pairs of the MNIST-SVHN test set.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_iwae.py [--n 200] [--K 1000] [--batch 8] [--runs 3]
"""
import argparse, os, statistics, sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from benchlib import build_iwae_model as build_model, peak_rss_mb, random_pair_batches, time_iwae
from mmvae_nb.likelihoods import default_chunk


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=200, help='test pairs per run')
    ap.add_argument('--K', type=int, default=1000, help='importance samples per pair')
    ap.add_argument('--batch', type=int, default=8, help='pairs per call (all K samples of a batch go through the decoders in chunks)')
    ap.add_argument('--chunk', type=int, default=None, help='samples per chunk (default: metrics.default_chunk)')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    ap.add_argument('--device', default='cpu')
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, what = build_model()
    model = model.to(a.device).eval()
    batches = random_pair_batches(a.n, a.batch, a.device)
    chunk = a.chunk or default_chunk(model, a.batch)
    print(f"model: {what}\ndevice {a.device}, torch threads {a.threads}, {a.n} random pairs, K={a.K}, "
          f"batch {a.batch}, chunk {chunk} ({min(chunk, a.K) * a.batch} latents per likelihood call)")
    runs = time_iwae(model, batches, a.K, chunk, a.runs, a.device, a.threads)
    wall_rates, cpu_rates = [r['items_s'] for r in runs], [r['items_s_cpu'] for r in runs]
    best, med = max(wall_rates), statistics.median(wall_rates)
    cbest, cmed = max(cpu_rates), statistics.median(cpu_rates)
    peak = peak_rss_mb()
    print(f"items/s wall clock: best {best:.2f}, median {med:.2f}; from CPU time: best {cbest:.2f}, median {cmed:.2f}")
    print(f"peak RSS {peak:.0f} MB; limit 8192 MB: {'ok' if peak < 8192 else 'EXCEEDED'}")
    print(f"10,000 test pairs at IWAE-{a.K}: {1e4 / best / 60:.1f} min at the best wall-clock rate, "
          f"{1e4 / cbest / 60:.1f} min at the best CPU-time rate")
    if a.device.startswith('cuda'): print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    return {'wall_best': best, 'wall_median': med, 'cpu_best': cbest, 'cpu_median': cmed, 'peak_rss_mb': peak}


if __name__ == '__main__':
    main()
