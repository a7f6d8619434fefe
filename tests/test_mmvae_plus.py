"""MMVAE+ (Palumbo et al. 2023): joint-vector layout, auxiliary priors, log-weights, gradient paths, masks, training."""
import math
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Laplace
from scipy import stats
from mmvae_nb.core import Batch, ModalitySpec, seed_everything
from mmvae_nb.models import Modality, meta_step
from mmvae_nb.mmvae_plus import MMVAEPlus, MMVAE_PLUS_OBJECTIVES, experts_on_joint, decoder_input


from toy import LinearEncoder as LinEnc, LinearDecoder as LinDec


SPECS = (ModalitySpec('x', (1, 3, 3)), ModalitySpec('y', (2, 2, 2)))
DZ, DW = 2, 3
MASK = torch.tensor([[1, 1], [0, 1], [1, 0], [1, 1], [1, 0]]).bool()


def make_model(dz=DZ, dw=DW, **kw):
    mods = [Modality(s, LinEnc(math.prod(s.shape), dz + dw), LinDec(dz + dw, s.shape), weight=2.0 if s.name == 'x' else 1.0)
            for s in SPECS]
    return MMVAEPlus(mods, dz, dw, **kw)


def make_batch(B=5, mask=MASK, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch({s.name: torch.rand(B, *s.shape, generator=g) for s in SPECS}, mask, ('x', 'y'))


def test_layout_helpers():
    qz = Laplace(torch.zeros(1, 2, DZ), torch.ones(1, 2, DZ))
    qw = Laplace(torch.full((1, 2, DW), 5.), torch.full((1, 2, DW), 0.1))
    aux = Laplace(torch.full((3, DW), -1.), torch.full((3, DW), 2.))
    qv = experts_on_joint(qz, qw, [1], aux)                 # expert of modality 1 out of 3
    assert qv.batch_shape == (1, 2, DZ + 3 * DW)
    blocks = qv.loc[0, 0, DZ:].view(3, DW)
    assert (blocks[1] == 5.).all() and (blocks[0] == -1.).all() and (blocks[2] == -1.).all()
    assert (qv.scale[0, 0, DZ + DW:DZ + 2 * DW] == 0.1).all()
    v = torch.arange(DZ + 3 * DW, dtype=torch.float)
    assert decoder_input(v, 2, DZ, DW).tolist() == [DZ + 2 * DW + i for i in range(DW)] + list(range(DZ))


def test_log_weights_match_brute_force():
    seed_everything(1)
    model, batch = make_model(K=3, beta=2.5), make_batch()
    with torch.no_grad():
        out = model.log_weights(batch)
        names, qz, qw, mask, slots = model.experts(batch)
        for e in range(2):
            for k in range(3):
                for b in range(5):
                    if not mask[b, e]: continue
                    v, w, z = out.v[e, k, b], out.u[e, k, b, :DW].numpy(), out.u[e, k, b, DW:].numpy()
                    ll = sum(model.mods[n].weight * model.mods[n].likelihood(decoder_input(v, j, DZ, DW)[None]).log_prob(batch.data[n][b:b + 1])[0]
                             for j, n in enumerate(('x', 'y')) if MASK[b, j])
                    mix = np.mean([stats.laplace.pdf(z, qz.loc[m, b].numpy(), qz.scale[m, b].numpy()).prod() for m in range(2) if mask[b, m]])
                    reg = (stats.laplace.logpdf(z).sum() + stats.laplace.logpdf(w).sum() - math.log(mix)
                           - stats.laplace.logpdf(w, qw.loc[e, b].numpy(), qw.scale[e, b].numpy()).sum())
                    assert out.lw[e, k, b].item() == pytest.approx(ll.item() + 2.5 * reg, abs=1e-3)
                    # self block is the posterior's own w, the other block an auxiliary draw
                    own = DZ + slots[e] * DW
                    assert torch.equal(v[own:own + DW], out.u[e, k, b, :DW]) and torch.equal(v[:DZ], out.u[e, k, b, DW:])


def test_cross_generation_uses_auxiliary_prior():
    model, batch = make_model(K=2), make_batch()
    with torch.no_grad(): model.aux_prior['y'].raw_scale.copy_(torch.tensor([1., 0., -1.]))
    sub = model.restrict(batch, ['x']).subset(MASK[:, 0])
    q = model.joint_posterior(sub)
    ry = model.aux_prior['y']().base_dist
    assert torch.allclose(q.experts[0].base_dist.scale[:, DZ + DW:], ry.scale.expand(4, DW))
    zx = model.unimodal_posteriors(sub)['x'].mean[:, :DZ]
    want = model.mods['y'].likelihood(torch.cat([torch.zeros(4, DW), zx], -1)).mean
    assert torch.allclose(model.generate(batch.subset(MASK[:, 0]), ['x'], ['y'])['y'], want)
    # with both observed, the mean keeps each modality's own w (not halved by the mixture)
    full, qs = model.joint_posterior(batch).mean, model.unimodal_posteriors(batch)
    assert torch.allclose(full[0, DZ:DZ + DW], qs['x'].mean[0, DZ:DZ + DW])
    assert torch.allclose(full[0, :DZ], (qs['x'].mean[0, :DZ] + qs['y'].mean[0, :DZ]) / 2)


def test_dreg_and_iwae_share_decoder_and_aux_gradients():
    model, batch = make_model(K=4), make_batch()
    g = {}
    for obj in ('dreg_looser', 'iwae_looser'):
        model.objective = obj; model.zero_grad(); seed_everything(2)
        model.loss(batch)[0].backward()
        g[obj] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n in g['dreg_looser']:
        if 'encoder' in n: assert not torch.allclose(g['dreg_looser'][n], g['iwae_looser'][n], atol=1e-5), n
        else: assert torch.allclose(g['dreg_looser'][n], g['iwae_looser'][n], atol=1e-5), n
    assert g['dreg_looser']['aux_prior.x.raw_scale'].abs().sum() > 0


@pytest.mark.parametrize('objective', MMVAE_PLUS_OBJECTIVES)
def test_hidden_values_never_leak(objective):
    model, batch = make_model(K=3, objective=objective), make_batch()
    nan = {n: x.clone() for n, x in batch.data.items()}
    for j, n in enumerate(('x', 'y')): nan[n][~MASK[:, j]] = float('nan')
    seed_everything(3); l1, _ = model.loss(batch)
    seed_everything(3); model.zero_grad(); l2, _ = model.loss(Batch(nan, MASK, ('x', 'y'))); l2.backward()
    assert torch.allclose(l1, l2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    only_x = Batch(batch.data, MASK & torch.tensor([True, False]), ('x', 'y')).subset(MASK[:, 0])
    model.zero_grad(); model.loss(only_x)[0].backward()
    for p in list(model.mods['y'].parameters()) + list(model.aux_prior['y'].parameters()):
        assert p.grad is None or not p.grad.any()


@pytest.mark.parametrize('objective', MMVAE_PLUS_OBJECTIVES)
def test_meta_step(objective):
    assert meta_step(make_model(K=2, objective=objective), make_batch()) == ()


def test_shapes_and_errors():
    model, batch = make_model(K=2), make_batch()
    assert model.latent_dim == DZ + 2 * DW
    assert model.sample(3)['y'].shape == (3, 2, 2, 2)
    assert model.shared(batch).shape == (5, DZ) and model.embed(batch).shape == (5, DZ + 2 * DW)
    with pytest.raises(ValueError, match='unknown MMVAE\\+ objective'): make_model(objective='dreg')
    with pytest.raises(ValueError, match='encoders must output'):
        MMVAEPlus(list(make_model().mods.values()), DZ + 1, DW).loss(batch)


def test_one_epoch_of_training_lowers_the_loss():
    seed_everything(4)
    N, C = 256, 4
    labels = torch.randint(0, C, (N,))
    protos = {s.name: torch.rand(C, *s.shape) for s in SPECS}
    data = {n: (p[labels] + 0.1 * torch.randn(N, *p.shape[1:])).clamp(0, 1) for n, p in protos.items()}
    mask = torch.ones(N, 2, dtype=torch.bool); mask[::4, 1] = False
    model = make_model(K=4, beta=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for epoch in range(2):
        for i in range(0, N, 16):
            loss, _ = model.loss(Batch({n: x[i:i + 16] for n, x in data.items()}, mask[i:i + 16], ('x', 'y')))
            opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
