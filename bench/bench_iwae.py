"""Time the IWAE-1000 log-likelihood on MMVAE's MNIST-SVHN architecture.

Model: `mmvae_nb.mmvae.MMVAE.from_specs` on the MNIST (1x28x28, arch 'mnist_mlp') and SVHN (3x32x32,
arch 'svhn_cnn') specs, latent 20, Laplace posteriors, learnable prior, MMVAE's lambda weights. If that
module is missing, a stand-in with the same networks (`build_modalities`) and a uniform mixture of the
unimodal posteriors (MMVAE's joint posterior) is used, and the output says so. Weights are untrained
and the pairs are uniform random images: the cost of the estimate does not depend on either.

Prints, for each run: wall time, items/s on the wall clock, items/s from CPU time (CPU seconds divided
by the thread count: what an otherwise idle machine would show when other processes share the cores),
then the best and median over runs, the peak resident memory of the process, and the extrapolated time
for the 10,000 pairs of the MNIST-SVHN test set.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_iwae.py [--n 200] [--K 1000] [--batch 8] [--runs 3]
"""
import argparse, os, resource, statistics, sys, time

import torch

from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.metrics import default_chunk, iwae_log_likelihood

SPECS = (ModalitySpec('mnist', (1, 28, 28), 'image', arch='mnist_mlp'),
         ModalitySpec('svhn', (3, 32, 32), 'image', arch='svhn_cnn'))


def build_model(latent_dim: int = 20):
    "MMVAE on MNIST-SVHN if `mmvae_nb.mmvae` exists, else a mixture-of-experts stand-in with the same networks."
    try:
        from mmvae_nb.mmvae import MMVAE
        return MMVAE.from_specs(SPECS, latent_dim=latent_dim), 'mmvae_nb.mmvae.MMVAE (Laplace posteriors, learnable prior)'
    except ImportError:
        from mmvae_nb.models import MultimodalVAE, UniformMixture
        from mmvae_nb.networks import build_modalities

        class MoEStandIn(MultimodalVAE):
            def joint_posterior(self, batch):
                qs = self.unimodal_posteriors(batch)
                return UniformMixture(list(qs.values()), torch.stack([batch.observed(n) for n in qs], -1))

        mods = build_modalities(SPECS, latent_dim, weight='mmvae')
        return MoEStandIn(mods, latent_dim, posterior='laplace_softmax', learn_prior=True), \
            'stand-in MoE (mmvae_nb.mmvae missing): same networks, uniform mixture posterior'


def peak_rss_mb() -> float:
    "Peak resident set size of this process in MB (Linux reports KB)."
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != 'darwin' else r / 2**20


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
    g = torch.Generator().manual_seed(1)
    data = {'mnist': torch.rand(a.n, 1, 28, 28, generator=g), 'svhn': torch.rand(a.n, 3, 32, 32, generator=g)}
    batches = [Batch({k: v[i:i + a.batch].to(a.device) for k, v in data.items()},
                     torch.ones(min(a.batch, a.n - i), 2, dtype=torch.bool, device=a.device), ('mnist', 'svhn'))
               for i in range(0, a.n, a.batch)]
    chunk = a.chunk or default_chunk(model, a.batch)
    print(f"model: {what}\ndevice {a.device}, torch threads {a.threads}, {a.n} random pairs, K={a.K}, "
          f"batch {a.batch}, chunk {chunk} ({min(chunk, a.K) * a.batch} latents per likelihood call)")
    iwae_log_likelihood(model, batches[0], K=min(a.K, 50), chunk=chunk)        # warm-up (oneDNN primitives)
    rss0 = peak_rss_mb()
    wall_rates, cpu_rates = [], []
    for r in range(a.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        vals = torch.cat([iwae_log_likelihood(model, b, K=a.K, chunk=chunk, seed=r) for b in batches])
        if a.device.startswith('cuda'): torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        wall_rates.append(a.n / wall); cpu_rates.append(a.n / (cpu / a.threads))
        print(f"run {r + 1}: {wall:7.1f} s wall, {wall_rates[-1]:6.2f} items/s (wall), {cpu_rates[-1]:6.2f} items/s (CPU time / {a.threads} threads); "
              f"mean log p(x) {vals.mean().item():.1f}")
    best, med = max(wall_rates), statistics.median(wall_rates)
    cbest, cmed = max(cpu_rates), statistics.median(cpu_rates)
    peak = peak_rss_mb()
    print(f"items/s wall clock: best {best:.2f}, median {med:.2f}; from CPU time: best {cbest:.2f}, median {cmed:.2f}")
    print(f"peak RSS {peak:.0f} MB (after warm-up {rss0:.0f} MB); limit 8192 MB: {'ok' if peak < 8192 else 'EXCEEDED'}")
    print(f"10,000 test pairs at IWAE-{a.K}: {1e4 / best / 60:.1f} min at the best wall-clock rate, "
          f"{1e4 / cbest / 60:.1f} min at the best CPU-time rate")
    if a.device.startswith('cuda'): print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
    return {'wall_best': best, 'wall_median': med, 'cpu_best': cbest, 'cpu_median': cmed, 'peak_rss_mb': peak}


if __name__ == '__main__':
    main()
