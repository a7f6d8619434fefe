"Independent checks of mmvae_nb.networks: shapes per architecture, output ranges, registry, weights, meta device."
import math
import pytest
import torch
from torch import nn

from mmvae_nb.core import ModalitySpec
from mmvae_nb.networks import (ARCHITECTURES, ETA, OutputHead, build_modalities, build_modality, count_parameters,
                               default_arch, mmvae_weights, param_shape)

D, K, B = 8, 3, 2

CASES = {
    'mnist_mlp': (ModalitySpec('mnist', (1, 28, 28)), lambda n: torch.rand(n, 1, 28, 28)),
    'svhn_cnn': (ModalitySpec('svhn', (3, 32, 32)), lambda n: torch.rand(n, 3, 32, 32)),
    'celeba_cnn': (ModalitySpec('celeba', (3, 64, 64)), lambda n: torch.rand(n, 3, 64, 64)),
    'cub_feature_mlp': (ModalitySpec('cubf', (2048,), 'features'), lambda n: torch.randn(n, 2048)),
    'caption_cnn': (ModalitySpec('cap', (32,), 'sequence', n_classes=40), lambda n: torch.randint(0, 40, (n, 32))),
    'feature_mlp': (ModalitySpec('mfcc', (13,), 'features'), lambda n: torch.randn(n, 13)),
    'label_mlp': (ModalitySpec('label', (), 'categorical', n_classes=10), lambda n: torch.randint(0, 10, (n,))),
    'attr_label_mlp': (ModalitySpec('attrs', (18,), 'binary'), lambda n: torch.randint(0, 2, (n, 18)).float()),
    'mlp': (ModalitySpec('poly', (3, 28, 28)), lambda n: torch.rand(n, 3, 28, 28)),
    'mlp_seq': (ModalitySpec('text', (8,), 'sequence', n_classes=71), lambda n: torch.randint(0, 71, (n, 8))),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize('case', list(CASES))
def test_shapes_per_architecture(case):
    spec, data = CASES[case]
    m = build_modality(spec, D)
    assert default_arch(spec) == case.split('_seq')[0].replace('attr_', '')
    x = data(B)
    loc, raw = m.encode(x)
    assert loc.shape == raw.shape == (B, D)
    out = m.decoder(torch.randn(K * B, D))
    extra = (spec.n_classes,) if spec.kind in ('categorical', 'sequence') else ()
    assert out.shape == (K * B, *spec.shape, *extra)
    lp = m.likelihood(torch.randn(K, B, D)).log_prob(x)
    assert lp.shape == (K, B) and torch.isfinite(lp).all()
    print(f"{case}: {count_parameters(m):,d} parameters")


def test_parameter_counts_match_paper_layers():
    m = build_modality(CASES['mnist_mlp'][0], 20)
    assert count_parameters(m.encoder) == (784 * 400 + 400) + 2 * (400 * 20 + 20)
    assert count_parameters(m.decoder) == (20 * 400 + 400) + (400 * 784 + 784)
    s = build_modality(CASES['svhn_cnn'][0], 20)
    convs = [(3, 32), (32, 64), (64, 128)]
    enc = sum(a * b * 16 + b for a, b in convs) + 2 * (128 * 20 * 16 + 20)
    assert count_parameters(s.encoder) == enc
    dec = (20 * 128 * 16 + 128) + sum(a * b * 16 + b for a, b in [(128, 64), (64, 32), (32, 3)])
    assert count_parameters(s.decoder) == dec
    f = build_modality(CASES['cub_feature_mlp'][0], 64)
    widths = [2048, 1024, 512, 256]
    enc = sum(a * b + b for a, b in zip(widths[:-1], widths[1:])) + 2 * (256 * 64 + 64)
    assert count_parameters(f.encoder) == enc
    assert isinstance(f.encoder.body[1], nn.ELU)


def test_output_ranges_depend_on_likelihood():
    spec = CASES['svhn_cnn'][0]
    mean_dec = build_modality(spec, D).decoder
    out = mean_dec(torch.randn(5, D) * 100)
    assert out.min() >= ETA and out.max() <= 1 - ETA
    logit_dec = build_modality(spec, D, likelihood='bernoulli').decoder
    with torch.no_grad():
        for p in logit_dec.parameters(): p.mul_(30)
    out = logit_dec(torch.randn(5, D))
    assert out.min() < 0 or out.max() > 1        # logits are unbounded
    # real features: unbounded mean, no sigmoid
    assert not OutputHead(CASES['feature_mlp'][0], 'laplace').squash


def test_caption_decoder_tied_to_embedding():
    m = build_modality(CASES['caption_cnn'][0], D)
    assert m.decoder.to_vocab.weight is m.encoder.embedding.weight
    with pytest.raises(ValueError, match='needs 32 tokens'):
        build_modality(ModalitySpec('c', (16,), 'sequence', n_classes=9, arch='caption_cnn'), D)


def test_label_embedding_equals_one_hot_linear():
    m = build_modality(CASES['label_mlp'][0], D)
    x = torch.arange(10)
    emb = m.encoder.embed
    assert torch.allclose(emb(x), torch.eye(10) @ emb.weight)


def test_mmvae_weights():
    w = mmvae_weights([CASES['mnist_mlp'][0], CASES['svhn_cnn'][0]])
    assert w['svhn'] == 1.0 and abs(w['mnist'] - 3.918367) < 1e-5
    ms = build_modalities([CASES['mnist_mlp'][0], CASES['svhn_cnn'][0]], D, weight='mmvae')
    assert abs(ms[0].weight - 3072 / 784) < 1e-9 and ms[1].weight == 1.0
    ms = build_modalities([CASES['mnist_mlp'][0], CASES['svhn_cnn'][0]], D, weight={'mnist': 2.0}, hidden={'mnist': 16})
    assert ms[0].weight == 2.0 and ms[1].weight == 1.0 and ms[0].encoder.body[0].out_features == 16


def test_registry_extension_and_errors():
    class Enc(nn.Module):
        def __init__(self): super().__init__(); self.f = nn.Linear(6, 2 * D)
        def forward(self, x): return self.f(x.flatten(1)).chunk(2, -1)
    class Dec(nn.Module):
        def __init__(self, spec, lik): super().__init__(); self.f = nn.Linear(D, 6); self.h = OutputHead(spec, lik)
        def forward(self, z): return self.h(self.f(z).view(-1, 3, 2))
    ARCHITECTURES['tiny_test_arch'] = (lambda spec, D, **kw: Enc(), lambda spec, D, likelihood, **kw: Dec(spec, likelihood))
    try:
        m = build_modality(ModalitySpec('s', (3, 2), 'features', arch='tiny_test_arch'), D)
        x = torch.randn(4, 3, 2)
        assert m.likelihood(torch.randn(K, 4, D)).log_prob(x).shape == (K, 4)
    finally:
        del ARCHITECTURES['tiny_test_arch']
    with pytest.raises(ValueError, match="unknown architecture 'tiny_test_arch'"):
        build_modality(ModalitySpec('s', (3, 2), 'features', arch='tiny_test_arch'), D)
    with pytest.raises(ValueError, match='needs square'):
        build_modality(ModalitySpec('s', (3, 48, 48), arch='svhn_cnn'), D)
    with pytest.raises(ValueError, match='unknown modalities'):
        build_modalities([CASES['mnist_mlp'][0]], D, likelihood={'nope': 'laplace'})


def test_param_shape():
    assert param_shape(CASES['caption_cnn'][0], 'sequence') == (32, 40)
    assert param_shape(CASES['label_mlp'][0], 'categorical') == (10,)
    assert param_shape(CASES['svhn_cnn'][0], 'laplace') == (3, 32, 32)


@pytest.mark.parametrize('case', ['mnist_mlp', 'svhn_cnn', 'caption_cnn', 'label_mlp'])
def test_meta_device(case):
    spec, data = CASES[case]
    m = build_modality(spec, D).to('meta')
    lp = m.likelihood(torch.randn(K, B, D, device='meta')).log_prob(data(B).to('meta'))
    lp.sum().backward()
    assert lp.shape == (K, B) and lp.device.type == 'meta'
