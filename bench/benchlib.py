"""Pieces the bench scripts share: the MMVAE MNIST-SVHN model and its IWAE timing loop, random data of a
registered dataset's shapes (with the real datasets' training-set sizes), synchronised timing.

Not a benchmark itself (`make bench` runs it and it prints nothing). Import it from a bench script
(`bench/` is on `sys.path` when a script there runs) or as `bench.benchlib` from the repository root
(how `mmvae-nb train --set dataset=bench.benchlib:random_dataset` finds its loader).
"""
from __future__ import annotations
import resource, sys, time

import torch

from mmvae_nb.core import Batch, ModalitySpec, check
from mmvae_nb.likelihoods import default_chunk, iwae_log_likelihood

SPECS = (ModalitySpec('mnist', (1, 28, 28), 'image', arch='mnist_mlp'),
         ModalitySpec('svhn', (3, 32, 32), 'image', arch='svhn_cnn'))


def build_iwae_model(latent_dim: int = 20):
    "(model, description): MMVAE on MNIST-SVHN if `mmvae_nb.mmvae` exists, else a mixture-of-experts stand-in with the same networks."
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


def synchronize(device):
    "Wait for the device's queued work (timings of CUDA code are meaningless without it)."
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)


def random_pair_batches(n: int, batch: int, device, seed: int = 1) -> list:
    "`n` uniform random MNIST-SVHN pairs (floats in [0, 1]) cut into fully observed batches of `batch` on `device`."
    g = torch.Generator().manual_seed(seed)
    data = {s.name: torch.rand(n, *s.shape, generator=g) for s in SPECS}
    return [Batch({k: v[i:i + batch].to(device) for k, v in data.items()},
                  torch.ones(min(batch, n - i), len(SPECS), dtype=torch.bool, device=device), tuple(s.name for s in SPECS))
            for i in range(0, n, batch)]


def time_iwae(model, batches: list, K: int, chunk: int | None = None, runs: int = 3, device='cpu', threads: int = 1,
              log=print) -> list:
    "Time IWAE-`K` over `batches` `runs` times after a warm-up; per run {'wall', 'cpu', 'items_s', 'items_s_cpu', 'mean_ll'}."
    chunk = chunk or default_chunk(model, len(batches[0]))
    iwae_log_likelihood(model, batches[0], K=min(K, 50), chunk=chunk)        # warm-up (oneDNN primitives, CUDA kernels)
    synchronize(device)
    n = sum(len(b) for b in batches)
    out = []
    for r in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        vals = torch.cat([iwae_log_likelihood(model, b, K=K, chunk=chunk, seed=r) for b in batches])
        synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append({'wall': wall, 'cpu': cpu, 'items_s': n / wall, 'items_s_cpu': n / max(cpu / threads, 1e-9),
                    'mean_ll': vals.mean().item(), 'finite': bool(torch.isfinite(vals).all())})
        log(f"run {r + 1}: {wall:7.2f} s wall, {out[-1]['items_s']:8.2f} items/s (wall), {out[-1]['items_s_cpu']:8.2f} items/s "
            f"(CPU time / {threads} threads); mean log p(x) {out[-1]['mean_ll']:.1f}")
    return out


# --- random data of a registered dataset's shapes ----------------------------------------------------------
# Class counts of the training splits (torchvision's MNIST and SVHN, SVHN's label 10 read as 0); the same
# numbers tests/test_multimodal.py checks against the real files. They give MNIST-SVHN's size for any dm.
MNIST_TRAIN_PER_CLASS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
SVHN_TRAIN_PER_CLASS = (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659)


def mnist_svhn_size(dm: int = 1, max_per_class: int = 10000) -> int:
    "Training pairs of `multimodal.mnist_svhn(dm=...)`: dm x sum over classes of min(#MNIST, #SVHN, max) (dm=30: 1,682,040)."
    return dm * sum(min(a, b, max_per_class) for a, b in zip(MNIST_TRAIN_PER_CLASS, SVHN_TRAIN_PER_CLASS))


def _poly(n: int = 5) -> tuple: return tuple(ModalitySpec(f'm{i}', (3, 28, 28), 'image') for i in range(n))


def _nominal(dataset: str, kw: dict) -> tuple:
    "(specs, training items, where the numbers come from) of a registered dataset, without its files."
    from mmvae_nb import multimodal as mm
    if dataset == 'related_fraction':    # the contrastive studies: another dataset's pairs, a fraction of them related (a mask)
        rest = {k: v for k, v in kw.items() if k not in ('source', 'f', 'scheme', 'seed', 'add_pairs')}
        return _nominal(kw.get('source', 'synthetic_digits'), rest)
    if dataset == 'synthetic_digits':
        from mmvae_nb import synthetic as syn
        return (syn.PEN_SPEC, syn.STREET_SPEC), kw.get('n') or syn.SPLITS['train'][1], 'synthetic.SPLITS'
    if dataset in ('mnist_svhn', 'mnist_svhn_partial'):   # the partial one: MEME's pairing (dm=1), a mask over it
        return (mm.MNIST_SPEC, mm.SVHN_SPEC), mnist_svhn_size(kw.get('dm', 1), kw.get('max_per_class', 10000)), \
            'MNIST/SVHN training class counts'
    if dataset == 'mnist_label': return (mm.MNIST_SPEC, mm.LABEL_SPEC), 60000, 'MNIST training split'
    if dataset == 'mnist_street':   # MEME's study: MNIST paired by class with the synthetic street digits (2,400 per class)
        from mmvae_nb import synthetic as syn
        return (mm.MNIST_SPEC, syn.STREET_SPEC), syn.SPLITS['train'][1], 'synthetic street training split, paired by class with MNIST'
    if dataset == 'polymnist': return _poly(), 60000, 'PolyMNIST training split (60,000 tuples)'
    if dataset == 'polymnist_standin': return _poly(), kw.get('n') or 60000, 'MNIST training split'
    if dataset == 'farsi_kannada_speech':
        specs = (ModalitySpec('farsi', (1, 28, 28), 'image', arch='mnist_mlp'),
                 ModalitySpec('kannada', (1, 28, 28), 'image', arch='mnist_mlp'), ModalitySpec('speech', (13,), 'features'))
        return specs, kw.get('n') or 60000, 'Hoda and Kannada-MNIST training splits (6,000 per class, no replacement)'
    if dataset == 'mmvae_nb.papers.triplet:seed003_triplets':    # seed 003: linear models, Kannada pool split 80/20
        specs = (ModalitySpec('farsi', (1, 28, 28), 'image', arch='linear'),
                 ModalitySpec('kannada', (1, 28, 28), 'image', arch='linear'), ModalitySpec('speech', (13,), 'features', arch='linear'))
        return specs, kw.get('n') or 16190, 'Kannada pool (Dig-MNIST + test) 80% part, one triplet per image'
    if dataset == 'cub':   # approximate: the vocabulary size depends on the captions (MMVAE's CUB vocabulary: 1,590)
        return (ModalitySpec('image', (2048,), 'features'), ModalitySpec('caption', (32,), 'sequence', n_classes=1590)), \
            88550, 'CUB train classes, 10 captions per image (approximate vocabulary)'
    if dataset == 'celeba':
        return (ModalitySpec('image', (3, 64, 64), 'image'), ModalitySpec('attributes', (40,), 'binary', n_classes=40)), \
            162770, 'CelebA training split'
    raise ValueError(f"no nominal shapes for dataset {dataset!r}: add them to bench/benchlib.py (_nominal)")


def nominal_data(cfg) -> tuple:
    "(specs, training items used by `cfg`, source note) for an `ExperimentConfig`, from the dataset's known shapes and sizes."
    check(isinstance(cfg.dataset, str), f"dataset must be a registered name, got {cfg.dataset!r}")
    specs, n, src = _nominal(cfg.dataset, dict(cfg.dataset_kwargs))
    if cfg.train_split == cfg.test_split and cfg.n_test: n -= cfg.n_test          # the held-out part of one split
    return specs, min(n, cfg.n_train) if cfg.n_train else n, src


def random_items(spec: ModalitySpec, n: int, g: torch.Generator) -> torch.Tensor:
    "`n` random items of modality `spec` in the dtype its dataset stores (uint8 images, int64 classes/tokens, float features)."
    if spec.kind == 'image': return torch.randint(0, 256, (n, *spec.shape), generator=g, dtype=torch.uint8)
    if spec.kind in ('categorical', 'sequence'): return torch.randint(0, spec.n_classes, (n, *spec.shape), generator=g)
    if spec.kind == 'binary': return torch.randint(0, 2, (n, *spec.shape), generator=g).float()
    return torch.randn(n, *spec.shape, generator=g)


def random_like(specs, n: int, seed: int = 0, name: str = 'random'):
    "A `MultimodalDataset` of `n` random items per modality of `specs`, random labels 0-9, fully observed."
    from mmvae_nb.multimodal import MultimodalDataset
    g = torch.Generator().manual_seed(seed)
    return MultimodalDataset({s.name: random_items(s, n, g) for s in specs}, specs, torch.randint(0, 10, (n,), generator=g),
                             name=f'{name} (random data, not a real dataset)', synthetic=True)


def random_dataset(split: str = 'train', n: int = 256, like: str = 'mnist_svhn', seed: int = 0):
    "A dataset loader for experiment configs: random data with the shapes of the registered dataset `like`."
    specs, _, _ = _nominal(like, {})
    return random_like(specs, n, seed + (split != 'train'), name=f'{like}-{split}')
