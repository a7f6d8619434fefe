#!/usr/bin/env python
"""Langevin steps/s of the EBM prior's sampler, and training samples/s of MMVAE with the EBM prior against the same
MMVAE with its Laplace prior (the baseline).

A training step of the EBM version adds one short-run Langevin chain per batch item (n_steps forward + backward passes
of the energy MLP z -> 200 -> 200 -> 1) and two energy evaluations to the baseline's step. Registered MNIST MLP / SVHN
CNN, Laplace posteriors, latent 20, K = 1, batch 128 of random pairs, one Adam step included.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_ebm_speed.py [--steps 3] [--langevin 10 50] [--device cuda]
"""
from __future__ import annotations
import argparse, statistics, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_meme_speed import SPECS, batch_of, stepper, time_steps
from mmvae_nb.core import seed_everything
from mmvae_nb.ebm_prior import EBMPrior, langevin
from mmvae_nb.mmvae import MMVAE
from mmvae_nb.networks import build_modalities


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--langevin', type=int, nargs='+', default=[10, 50]); p.add_argument('--batch', type=int, default=128)
    p.add_argument('--steps', type=int, default=3); p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    print(f"device {dev}, {torch.get_num_threads()} threads, batch {a.batch}")
    seed_everything(0)
    base = MMVAE(build_modalities(SPECS, 20), latent_dim=20, K=1, posterior='laplace_softmax').to(dev)
    ebm = EBMPrior(base, n_steps=50).to(dev)
    for D in (20, 64):
        from mmvae_nb.ebm_prior import EnergyMLP
        e = EnergyMLP(D).to(dev); z0 = torch.randn(a.batch, D, device=dev)
        def chain(): langevin(lambda z: e(z) - z.abs().sum(-1), z0, 50); sync()
        chain(); t0 = time.perf_counter(); chain(); t = time.perf_counter() - t0
        print(f"Langevin, latent {D}: {50 / t:.0f} steps/s on {a.batch} chains ({50 * a.batch / t:.0f} chain-steps/s)")
    batch = batch_of(a.batch, dev)
    t_base = statistics.median(time_steps(stepper(base, batch), a.steps) for _ in range(a.repeats))
    print(f"{'model':>22} {'s/step':>8} {'samples/s':>10} {'ratio':>6}")
    print(f"{'MMVAE (Laplace prior)':>22} {t_base:>8.3f} {a.batch / t_base:>10.0f} {1:>6.2f}")
    for n in a.langevin:
        ebm.n_steps = n
        t = statistics.median(time_steps(stepper(ebm, batch), a.steps) for _ in range(a.repeats))
        print(f"{f'+ EBM prior, {n} steps':>22} {t:>8.3f} {a.batch / t:>10.0f} {t / t_base:>6.2f}")


if __name__ == '__main__':
    main()
