"""A tiny model, tiny in-memory data and a training worker for the trainer's subprocess tests.

Run as a script (alone or under `python -m torch.distributed.run`), it trains the toy model with
`mmvae_nb.train.Trainer` and saves the final parameters to `<out>/final.pt` (rank 0).
"""
from __future__ import annotations
import argparse, math, os, sys, time
from pathlib import Path
import torch
from torch import nn
from torch.distributions import Independent, Normal
from mmvae_nb.core import ModalitySpec
from mmvae_nb.models import MultimodalVAE, Modality
from mmvae_nb.distributions import product_of_experts
from mmvae_nb.train import Trainer, TrainConfig, init_distributed, close_distributed
from mmvae_nb.multimodal import MultimodalDataset, BatchIterator


from toy import LinearEncoder as Enc, LinearDecoder as Dec


class ToyPoE(MultimodalVAE):
    "PoE of two linear-Gaussian experts; `deterministic` decodes the posterior mean (no sampling noise)."
    deterministic, sleep = False, 0.0

    def joint_posterior(self, batch):
        qs = self.unimodal_posteriors(batch); names = [n for n in self.names if n in qs]
        loc, scale = product_of_experts(torch.stack([qs[n].base_dist.loc for n in names]),
                                        torch.stack([qs[n].base_dist.scale for n in names]),
                                        mask=torch.stack([batch.observed(n) for n in names], -1))
        return Independent(Normal(loc, scale), 1)

    def loss(self, batch):
        if self.sleep: time.sleep(self.sleep)            # slow enough to be killed mid-epoch
        q = self.joint_posterior(batch)
        z = q.mean if self.deterministic else q.rsample()
        lpx = sum(torch.where(batch.observed(n), p.log_prob(batch.data[n]), 0.) for n, p in self.likelihoods(z).items())
        kl = torch.distributions.kl_divergence(q, self.prior())
        elbo = lpx - self.beta * self.kl_scale * kl
        return -elbo.mean(), {'elbo': elbo.mean().detach(), 'kl': kl.mean().detach()}


def toy_model(seed=0, D=2, deterministic=False, sleep=0.0):
    torch.manual_seed(seed)
    specs = [ModalitySpec('a', (6,), 'features'), ModalitySpec('b', (4,), 'features')]
    m = ToyPoE([Modality(s, Enc(s.shape[0], D), Dec(D, s.shape)) for s in specs], latent_dim=D)
    m.deterministic, m.sleep = deterministic, sleep
    return m


SPECS = (ModalitySpec('a', (6,), 'features'), ModalitySpec('b', (4,), 'features'))


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    a, b = torch.sigmoid(z @ torch.randn(2, 6, generator=g)), torch.sigmoid(z @ torch.randn(2, 4, generator=g))
    mask = torch.ones(n, 2, dtype=torch.bool); mask[::5, 1] = False      # some items lack modality b
    return MultimodalDataset({'a': a, 'b': b}, SPECS, torch.zeros(n, dtype=torch.long), mask=mask, name='toy')


def toy_batches(n=96, batch_size=8, seed=0, rank=0, world_size=1):
    "`batch_size` is the GLOBAL batch: each of `world_size` ranks gets an equal share."
    assert batch_size % world_size == 0
    return BatchIterator(toy_data(n), batch_size // world_size, seed=seed, device='cpu', rank=rank, world_size=world_size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--out', required=True)
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--items', type=int, default=96, help='training items')
    ap.add_argument('--batch-size', type=int, default=8, help='GLOBAL batch size (split over ranks)')
    ap.add_argument('--ckpt-every', type=int, default=5)
    ap.add_argument('--no-epoch-ckpt', action='store_true', help='checkpoint only every --ckpt-every steps')
    ap.add_argument('--sleep', type=float, default=0.0, help='seconds per loss evaluation')
    ap.add_argument('--deterministic', action='store_true', help='no sampling noise (DDP comparison)')
    ap.add_argument('--resume', action='store_true')
    ap.add_argument('--lr', type=float, default=1e-2)
    args = ap.parse_args(argv)
    rank, ws, device = init_distributed('cpu')
    model = toy_model(deterministic=args.deterministic, sleep=args.sleep)
    it = toy_batches(args.items, args.batch_size, seed=0, rank=rank, world_size=ws)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, warmup_epochs=1, ckpt_every=args.ckpt_every,
                      ckpt_each_epoch=not args.no_epoch_ckpt, progress=False, verbose=False, seed=0)
    tr = Trainer(model, it, cfg, out_dir=args.out)
    tr.fit(resume=args.resume)
    if rank == 0: torch.save(model.state_dict(), Path(args.out) / 'final.pt')
    close_distributed()                     # all ranks together: a rank tearing down early can abort its peer


if __name__ == '__main__':
    main()
