#!/usr/bin/env python
"""Training throughput (samples/s) of MEME beside MMVAE on the same networks, and whether MEME's step costs what
its extra network passes explain.

Both models get the registered MNIST MLP (784-400) and SVHN-style CNN (32-64-128) with Gaussian posteriors, latent
64, batch 128 of random 1x28x28 + 3x32x32 pairs, one Adam step included. Per step and modality, MMVAE (K samples,
`dreg_looser`) decodes K x B latents with BOTH decoders (every expert's samples go through every decoder), MEME
(K LogSumExp terms) decodes K x B latents with the OTHER modality's decoder plus B with its own — so at equal K
MEME decodes about half of what MMVAE does, plus it encodes its 2 x N pseudo-samples when a batch has unpaired
items. The script times both and prints the time ratio beside the ratio of decoded items (the dominant cost);
MEME passes when its time ratio is within 25% of what the decoded items predict.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_meme_speed.py [--K 10] [--steps 5] [--device cuda]
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing
from mmvae_nb.core import Batch, ModalitySpec, seed_everything
from mmvae_nb.meme import MEME
from mmvae_nb.mmvae import MMVAE
from mmvae_nb.networks import build_modalities

SPECS = (ModalitySpec('mnist', (1, 28, 28), 'image', arch='mnist_mlp'), ModalitySpec('svhn', (3, 32, 32), 'image', arch='svhn_cnn'))


def batch_of(B: int, device, unpaired: float = 0.0) -> Batch:
    "Random pairs; the last `unpaired` fraction of rows observe one modality (alternating)."
    g = torch.Generator().manual_seed(0)
    data = {s.name: torch.rand(B, *s.shape, generator=g).to(device) for s in SPECS}
    mask = torch.ones(B, 2, dtype=torch.bool)
    n = int(B * unpaired)
    if n: mask[B - n:, 0] = torch.arange(n) % 2 == 0; mask[B - n:, 1] = ~mask[B - n:, 0]
    return Batch(data, mask.to(device), tuple(s.name for s in SPECS))


def stepper(model, batch):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    def step():
        loss, _ = model.loss(batch); opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if batch.mask.device.type == 'cuda': torch.cuda.synchronize()
    return step


def time_steps(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup): step()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--K', type=int, default=10); p.add_argument('--batch', type=int, default=128)
    p.add_argument('--steps', type=int, default=5); p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--latent', type=int, default=64); p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, batch {a.batch}, latent {a.latent}, K {a.K}")
    seed_everything(0)
    models = {'MMVAE (dreg_looser)': MMVAE(build_modalities(SPECS, a.latent), a.latent, K=a.K, posterior='normal', objective='dreg_looser').to(dev),
              'MEME, all paired': MEME(build_modalities(SPECS, a.latent), a.latent, K=a.K).to(dev),
              'MEME, half unpaired': MEME(build_modalities(SPECS, a.latent), a.latent, K=a.K).to(dev)}
    batches = {'MMVAE (dreg_looser)': batch_of(a.batch, dev), 'MEME, all paired': batch_of(a.batch, dev),
               'MEME, half unpaired': batch_of(a.batch, dev, 0.5)}
    steps = {k: stepper(m, batches[k]) for k, m in models.items()}
    times = {k: [] for k in models}
    for _ in range(a.repeats):                       # interleaved: machine noise hits every model alike
        for k, s in steps.items(): times[k].append(time_steps(s, a.steps))
    best = {k: min(v) for k, v in times.items()}
    print(f"{'model':<22}{'s/step best':>12}{'median':>10}{'samples/s':>11}")
    for k, v in times.items(): print(f"{k:<22}{best[k]:>12.3f}{statistics.median(v):>10.3f}{a.batch / best[k]:>11.0f}")
    # decoded items per step (per modality's decoder): MMVAE 2 sources x K x B each; MEME (K + 1) x B each
    dec_mmvae, dec_meme = 2 * a.K, a.K + 1
    predicted, measured = dec_meme / dec_mmvae, best['MEME, all paired'] / best['MMVAE (dreg_looser)']
    ok = measured <= 1.25 * predicted
    print(f"MEME/MMVAE time per step {measured:.2f}; decoded items predict {predicted:.2f} -> "
          f"{'PASS' if ok else 'FAIL'}: MEME costs {'no more than' if ok else 'more than'} its network passes explain (+25%)")


if __name__ == '__main__':
    os.environ.setdefault('OMP_NUM_THREADS', '2')
    main()
