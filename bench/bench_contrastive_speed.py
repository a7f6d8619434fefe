#!/usr/bin/env python
"""Training throughput (samples/s) of the contrastive objective beside its base model's own step, for MVAE, MMVAE
and JMVAE, against the number N of re-pairings per related pair.

The contrastive step adds one pass of the base model's bound over (N + 1) x P items (P related pairs of the batch:
the pairs and their N re-pairings, concatenated into one batch) to the base model's own step. The script prints
samples/s of each and the time ratio beside N + 2, the ratio of network passes a naive count predicts (base step,
plus N + 1 batches through the bound). Registered MNIST MLP / SVHN CNN, Gaussian posteriors, latent 20, batch 128
of random pairs, one Adam step included.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_contrastive_speed.py [--N 1 2 5] [--steps 3] [--device cuda]
"""
from __future__ import annotations
import argparse, statistics, sys
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_meme_speed import SPECS, batch_of, stepper, time_steps
from mmvae_nb.core import seed_everything
from mmvae_nb.contrastive import Contrastive
from mmvae_nb.experiments import MODELS, resolve
from mmvae_nb.networks import build_modalities

BASES = {'mvae': {}, 'mmvae': {'K': 1, 'posterior': 'normal'}, 'jmvae': {}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--N', type=int, nargs='+', default=[1, 2, 5]); p.add_argument('--batch', type=int, default=128)
    p.add_argument('--steps', type=int, default=3); p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    batch = batch_of(a.batch, dev)
    print(f"device {dev}, {torch.get_num_threads()} threads, batch {a.batch} related pairs; samples/s = batch items per second")
    print(f"{'model':>7} {'N':>3} {'base s/step':>12} {'contr. s/step':>14} {'base samples/s':>15} {'contr. samples/s':>17} {'ratio':>6} {'N+2':>4}")
    for base, kw in BASES.items():
        seed_everything(0)
        model = resolve(base, MODELS, 'model')(build_modalities(SPECS, 20), latent_dim=20, **kw).to(dev)
        t_base = statistics.median(time_steps(stepper(model, batch), a.steps) for _ in range(a.repeats))
        for n in a.N:
            wrapped = Contrastive(model, gamma=2.0, n_negatives=n)
            t = statistics.median(time_steps(stepper(wrapped, batch), a.steps) for _ in range(a.repeats))
            print(f"{base:>7} {n:>3} {t_base:>12.3f} {t:>14.3f} {a.batch / t_base:>15.0f} {a.batch / t:>17.0f} {t / t_base:>6.2f} {n + 2:>4}")


if __name__ == '__main__':
    main()
