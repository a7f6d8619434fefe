#!/usr/bin/env python
"""Training throughput (samples/s) of MMVAE: ours (`mmvae_nb.mmvae.MMVAE`) against MultiVae's `MMVAE`.

Configuration (the MMVAE paper's MNIST-SVHN model, peers.md §2.1): latent 20, K=10 importance samples
per expert, `dreg_looser`, Laplace posteriors/prior with softmax scales and a learnable prior, Laplace
likelihoods of scale 0.75, MNIST log-likelihood x 3072/784, batch 128 of random 1x28x28 + 3x32x32 pairs,
an Adam (amsgrad) step included. The networks are identical on both sides: MultiVae's model receives
our `mmvae_nb.networks` MNIST MLP (784-400-20) and SVHN CNN (32-64-128, 4x4 kernels) wrapped in pythae's
`BaseEncoder`/`BaseDecoder` (MultiVae's default MLP has 512 units, its SVHN CNN is the same as ours).

MultiVae is imported only when installed (keep it out of the project's venv):
    .venv/bin/python -m venv .venv-bench
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-bench/lib/python3.11/site-packages/_main_venv.pth
    .venv-bench/bin/pip install -c constraints.txt multivae
    OMP_NUM_THREADS=2 .venv-bench/bin/python bench/bench_mmvae_speed.py
`--e2e` adds the end-to-end comparison: each library with its own networks and its own data path.
Each repeat times `--steps` steps after `--warmup` steps; implementations are interleaved repeat by
repeat so that machine noise hits both alike; best and median over repeats are reported.
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing
from mmvae_nb.core import Batch, ModalitySpec, seed_everything
from mmvae_nb.mmvae import MMVAE
from mmvae_nb.networks import build_modalities, mmvae_weights

SPECS = (ModalitySpec('mnist', (1, 28, 28), 'image', arch='mnist_mlp'), ModalitySpec('svhn', (3, 32, 32), 'image', arch='svhn_cnn'))


def random_pairs(batch_size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {s.name: torch.rand(batch_size, *s.shape, generator=g).to(device) for s in SPECS}


def make_ours(data: dict, args, device):
    "Our MMVAE, its optimiser and a step function."
    seed_everything(0)
    model = MMVAE(build_modalities(SPECS, args.latent, weight='mmvae'), args.latent, K=args.K, objective=args.objective,
                  decode_chunk=args.decode_chunk).to(device)
    if args.channels_last: model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    B = len(next(iter(data.values())))
    batch = Batch(data, torch.ones(B, len(SPECS), dtype=torch.bool, device=device), tuple(s.name for s in SPECS))
    if args.compile:
        import torch._inductor.config as inductor_config
        inductor_config.fallback_random = True        # same random numbers as eager: identical samples and gradients
    loss_fn = torch.compile(model.loss) if args.compile else model.loss
    def step():
        loss, _ = loss_fn(batch)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss
    return model, step


def multivae_config(args):
    "MultiVae's MMVAEConfig for the paper's MNIST-SVHN model (same likelihoods, rescaling, prior and objective as ours)."
    from multivae.models import MMVAEConfig
    names = [s.name for s in SPECS]
    return MMVAEConfig(n_modalities=len(SPECS), latent_dim=args.latent, input_dims={s.name: s.shape for s in SPECS},
                       decoders_dist={n: 'laplace' for n in names}, decoder_dist_params={n: {'scale': 0.75} for n in names},
                       uses_likelihood_rescaling=True, rescale_factors=mmvae_weights(SPECS), K=args.K,
                       prior_and_posterior_dist='laplace_with_softmax', learn_prior=True,
                       loss='dreg_looser' if args.objective == 'dreg_looser' else 'iwae_looser')


def make_multivae(data: dict, args, device):
    "MultiVae's MMVAE with our networks wrapped as pythae encoders/decoders, or None when MultiVae is not installed."
    try:
        from multivae.models import MMVAE as MVMMVAE, MMVAEConfig
        from multivae.data.datasets.base import DatasetOutput
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn.base_architectures import BaseEncoder, BaseDecoder
    except ImportError:
        return None

    class Enc(BaseEncoder):
        def __init__(self, net): BaseEncoder.__init__(self); self.net = net
        def forward(self, x):
            loc, raw = self.net(x)
            return ModelOutput(embedding=loc, log_covariance=raw)

    class Dec(BaseDecoder):
        def __init__(self, net): BaseDecoder.__init__(self); self.net = net
        def forward(self, z):
            lead = z.shape[:-1]
            out = self.net(z.reshape(-1, z.shape[-1]))
            return ModelOutput(reconstruction=out.reshape(*lead, *out.shape[1:]))

    seed_everything(0)
    mods = build_modalities(SPECS, args.latent)
    names = [s.name for s in SPECS]
    cfg = multivae_config(args)
    model = MVMMVAE(cfg, encoders={m.name: Enc(m.encoder) for m in mods}, decoders={m.name: Dec(m.decoder) for m in mods}).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    inputs = DatasetOutput(data=dict(data))
    def step():
        out = model(inputs)
        opt.zero_grad(set_to_none=True); out.loss.backward(); opt.step()
        return out.loss
    return model, step


def make_ours_e2e(args, device, n: int = 2048):
    "Ours end to end: uint8 images in a `MultimodalDataset`, our `BatchIterator` (device-resident, no per-item work)."
    from mmvae_nb.multimodal import MultimodalDataset, BatchIterator
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = {s.name: torch.randint(0, 256, (n, *s.shape), generator=g, dtype=torch.uint8) for s in SPECS}
    ds = MultimodalDataset(data, SPECS, torch.randint(0, 10, (n,), generator=g))
    model = MMVAE(build_modalities(SPECS, args.latent, weight='mmvae'), args.latent, K=args.K, objective=args.objective).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    it = BatchIterator(ds, batch_size=args.batch, shuffle=True, seed=0, device=device, drop_last=True)
    batches = iter(())
    def step():
        nonlocal batches
        b = next(batches, None)
        if b is None: batches = iter(it); b = next(batches)
        loss, _ = model.loss(b)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss
    return model, step


def make_multivae_e2e(args, device, n: int = 2048):
    "MultiVae as its docs use it: its own MNIST MLP / SVHN CNN, a `MultimodalBaseDataset` and a torch `DataLoader`."
    try:
        from multivae.models import MMVAE as MVMMVAE, MMVAEConfig
        from multivae.data.datasets.base import MultimodalBaseDataset
        from multivae.models.nn.default_architectures import Encoder_VAE_MLP, Decoder_AE_MLP
        from multivae.models.nn.svhn import Encoder_VAE_SVHN, Decoder_VAE_SVHN
        from pythae.models.base import BaseAEConfig
    except ImportError:
        return None
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = {s.name: torch.randint(0, 256, (n, *s.shape), generator=g, dtype=torch.uint8).float() / 255 for s in SPECS}
    ds = MultimodalBaseDataset(data=data, labels=torch.randint(0, 10, (n,), generator=g))
    names = [s.name for s in SPECS]
    cfg = multivae_config(args)
    c = {m: BaseAEConfig(input_dim=s.shape, latent_dim=args.latent) for m, s in zip(names, SPECS)}
    enc = {'mnist': Encoder_VAE_MLP(c['mnist']), 'svhn': Encoder_VAE_SVHN(c['svhn'])}
    dec = {'mnist': Decoder_AE_MLP(c['mnist']), 'svhn': Decoder_VAE_SVHN(c['svhn'])}
    model = MVMMVAE(cfg, encoders=enc, decoders=dec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True)
    batches = iter(())
    def step():
        nonlocal batches
        b = next(batches, None)
        if b is None: batches = iter(loader); b = next(batches)
        b.data = {k: v.to(device) for k, v in b.data.items()}
        out = model(b)
        opt.zero_grad(set_to_none=True); out.loss.backward(); opt.step()
        return out.loss
    return model, step


def throughput(step, batch_size: int, warmup: int, steps: int, device, timer=time.perf_counter) -> float:
    "Samples per second of `timer` (wall clock, or process CPU time: robust to other processes on one thread)."
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup): step()
    sync(); t0 = timer()
    for _ in range(steps): step()
    sync()
    return batch_size * steps / (timer() - t0)


def flops_per_sample(step, batch_size: int) -> float:
    "MFLOP per sample of one training step (forward + backward), counted by torch's FlopCounterMode."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: step()
    return fc.get_total_flops() / batch_size / 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--devices', default='auto', help="'cpu', 'cuda', 'cpu,cuda' or 'auto' (cpu, and cuda when present)")
    p.add_argument('--batch', type=int, default=128); p.add_argument('--K', type=int, default=10)
    p.add_argument('--latent', type=int, default=20); p.add_argument('--objective', default='dreg_looser')
    p.add_argument('--warmup', type=int, default=3); p.add_argument('--steps', type=int, default=5)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: OMP_NUM_THREADS or all cores)')
    p.add_argument('--compile', action='store_true', help='torch.compile our loss (CPU: ~1 min to compile, needs a C++ compiler)')
    p.add_argument('--decode-chunk', type=int, default=None, help='decoder block size (default: 512 on CPU, one call on GPU; 0 = one call)')
    p.add_argument('--timer', choices=('wall', 'process'), default='wall',
                   help="'process' = CPU seconds of this process: with --threads 1 it ignores other load on a shared machine")
    p.add_argument('--channels-last', action='store_true', help='our model in channels_last memory format')
    p.add_argument('--no-multivae', action='store_true'); p.add_argument('--flops', action='store_true')
    p.add_argument('--e2e', action='store_true', help="also time each library end to end as its docs use it: its own "
                   "networks and data path (ours: uint8 MultimodalDataset + BatchIterator; MultiVae: its MNIST MLP / SVHN "
                   "CNN, MultimodalBaseDataset + DataLoader)")
    args = p.parse_args(argv)
    threads = args.threads or int(os.environ.get('OMP_NUM_THREADS', 0)) or os.cpu_count()
    torch.set_num_threads(threads)
    devices = (['cpu'] + (['cuda'] if torch.cuda.is_available() else [])) if args.devices == 'auto' else args.devices.split(',')
    print(f"torch {torch.__version__}, {threads} CPU threads; batch {args.batch}, K {args.K}, latent {args.latent}, {args.objective}, "
          f"decode_chunk {args.decode_chunk}, compile {args.compile}, timer {args.timer}")
    summary = {}
    for dev in map(torch.device, devices):
        data = random_pairs(args.batch, dev)
        impls = {'ours': make_ours(data, args, dev)}
        if not args.no_multivae:
            mv = make_multivae(data, args, dev)
            if mv is None: print('multivae: not installed')
            else: impls['multivae'] = mv
        if args.e2e:
            impls['ours-e2e'] = make_ours_e2e(args, dev)
            mv = None if args.no_multivae else make_multivae_e2e(args, dev)
            if mv is not None: impls['multivae-e2e'] = mv
        if args.flops:
            for name, (_, step) in impls.items(): print(f"{dev.type} {name}: {flops_per_sample(step, args.batch):.0f} MFLOP/sample")
        rates = {name: [] for name in impls}
        for r in range(args.repeats):
            for name, (_, step) in impls.items():
                timer = time.process_time if args.timer == 'process' and dev.type == 'cpu' else time.perf_counter
                rates[name].append(throughput(step, args.batch, args.warmup if r == 0 else 1, args.steps, dev, timer))
        for name, rs in rates.items():
            summary[(dev.type, name)] = (max(rs), statistics.median(rs))
            print(f"{dev.type:4s} {name:9s} samples/s: best {max(rs):8.1f}  median {statistics.median(rs):8.1f}  "
                  f"(repeats: {', '.join(f'{x:.1f}' for x in rs)})")
        for a, b_ in (('ours', 'multivae'), ('ours-e2e', 'multivae-e2e')):
            if a in rates and b_ in rates:
                b, m = summary[(dev.type, a)], summary[(dev.type, b_)]
                print(f"{dev.type:4s} {a} / {b_}: best {b[0] / m[0]:.2f}x  median {b[1] / m[1]:.2f}x")
    return summary


if __name__ == '__main__':
    main()
