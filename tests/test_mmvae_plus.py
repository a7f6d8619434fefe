"""MMVAE+ (Palumbo et al. 2023): joint-vector layout, auxiliary priors, log-weights, gradient paths, masks, training;
what the objective bounds and the IWAE likelihood estimate, checked by quadrature on a linear-Gaussian model."""
import math
import numpy as np
import pytest
import torch
from torch import nn
from types import SimpleNamespace
from unittest.mock import patch
from torch.distributions import Laplace, MultivariateNormal, Normal
from scipy import stats
from mmvae_nb.core import Batch, ModalitySpec, seed_everything
from mmvae_nb.models import Modality, meta_step
from mmvae_nb.mmvae_plus import MMVAEPlus, MMVAE_PLUS_OBJECTIVES, experts_on_joint, decoder_input
from mmvae_nb.mmvae import moe_iwae_looser
from mmvae_nb.likelihoods import iwae_log_likelihood


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


# --- what the objective bounds, and the likelihood estimate: a linear-Gaussian MMVAE+ small enough for quadrature ---------

DT, SIGMA, R, KS = torch.float64, 0.5, 400, (1, 10, 100, 1000)
LG_DEC = {'a': ([[1.0, 0.8], [-0.5, 1.2]], [0.2, -0.1]), 'b': ([[0.7, -1.0], [1.1, 0.6]], [0.0, 0.3])}   # x_d = A_d [w_d, z] + c_d
LG_X = {'a': torch.tensor([[0.9, 0.4]], dtype=DT), 'b': torch.tensor([[0.1, 1.0]], dtype=DT)}
SUBSETS = (('a', 'b'), ('a',), ('b',))


class AffineEncoder(nn.Module):
    def __init__(self, P, p0, raw): super().__init__(); self.P, self.p0, self.raw = P, p0, raw
    def forward(self, x): return x @ self.P.T + self.p0, self.raw.expand(x.shape[0], -1)


def linear_gaussian_plus(r_scale=0.4, inflate=1.3):
    "D_z = D_w = 1, Normal priors of scale 1, auxiliary priors of scale r_scale; encoders = unimodal exact posteriors, inflated."
    mods = []
    for n, (A, c) in LG_DEC.items():
        A, c = torch.tensor(A, dtype=DT), torch.tensor(c, dtype=DT)
        cov = torch.linalg.inv(torch.eye(2, dtype=DT) + A.T @ A / SIGMA**2)
        P, std = cov @ A.T / SIGMA**2, cov.diagonal().sqrt() * inflate
        dec = nn.Linear(2, 2).to(DT)
        with torch.no_grad(): dec.weight.copy_(A); dec.bias.copy_(c)
        mods.append(Modality(ModalitySpec(n, (2,), 'features'), AffineEncoder(P, -P @ c, torch.log(torch.expm1(std - 1e-6))), dec,
                             likelihood='normal', likelihood_scale=SIGMA))
    model = MMVAEPlus(mods, 1, 1, posterior='normal', K=1, decode_chunk=0).to(DT)
    with torch.no_grad():
        for r in model.aux_prior.values(): r.raw_scale.fill_(math.log(math.expm1(r_scale - 1e-6)))
    return model


def lg_batch(S, n=1):
    return Batch({m: LG_X[m].expand(n, 2) for m in S}, torch.tensor([[m in S for m in 'ab']]).expand(n, 2), ('a', 'b'))


def exact_log_px(model, S):
    W = torch.zeros(2 * len(S), 3, dtype=DT)
    for i, n in enumerate(S):
        A = torch.tensor(LG_DEC[n][0], dtype=DT)
        W[2 * i:2 * i + 2, 0], W[2 * i:2 * i + 2, 1 + model.names.index(n)] = A[:, 1], A[:, 0]
    cov = W @ torch.diag(model.prior().base_dist.scale**2) @ W.T + SIGMA**2 * torch.eye(2 * len(S), dtype=DT)
    mu = torch.cat([torch.tensor(LG_DEC[n][1], dtype=DT) for n in S])
    return MultivariateNormal(mu, cov).log_prob(torch.cat([LG_X[n][0] for n in S])).item()


GRID_H = 12 / 80
GRID = torch.stack(torch.meshgrid(*[torch.linspace(-6, 6, 81, dtype=DT)] * 3, indexing='ij'), -1).reshape(-1, 1, 3)


def grid_log_integral(log_f): return (torch.logsumexp(log_f.flatten(), 0) + 3 * math.log(GRID_H)).item()


def _one(d, e): return type(d)(d.loc[e], d.scale[e])


@torch.no_grad()
def quadrature(model, S):
    "(log p(x_S), L_inf = mean_m log ∫ Q_m w_m) on a grid over v = [z, w_a, w_b], written from the densities (λ = β = 1)."
    b = lg_batch(S)
    log_lik = sum(model.likelihoods(GRID, S)[n].log_prob(LG_X[n]) for n in S)
    log_px = grid_log_integral(model.prior().log_prob(GRID) + log_lik)
    _, qz, qw, _, slots = model.experts(b)
    z, sz = GRID[..., :1], model.prior_net.z().base_dist.scale
    log_qS = torch.logsumexp(torch.stack([_one(qz, e).log_prob(z).sum(-1) for e in range(len(S))]), 0) - math.log(len(S))
    r = model.aux()
    L_inf = 0.
    for e, m in enumerate(S):
        j = slots[e]
        log_Q = _one(qz, e).log_prob(z).sum(-1) + _one(qw, e).log_prob(GRID[..., 1 + j:2 + j]).sum(-1)
        for d in range(2):                                     # expert m's sampling density: r_d on every other block
            if d != j: log_Q = log_Q + Normal(r.loc[d], r.scale[d]).log_prob(GRID[..., 1 + d:2 + d]).sum(-1)
        log_w = (log_lik + Normal(0., sz).log_prob(z).sum(-1) + Normal(0., 1.).log_prob(GRID[..., 1 + j:2 + j]).sum(-1) - log_qS
                 - _one(qw, e).log_prob(GRID[..., 1 + j:2 + j]).sum(-1))
        L_inf += grid_log_integral(log_Q + log_w) / len(S)
    return log_px, L_inf


def mean_se(x): return x.mean().item(), x.std().item() / math.sqrt(len(x))


@torch.no_grad()
def training_curve(model, S):
    out = []
    for K in KS:
        seed_everything(K); lw = model.log_weights(lg_batch(S, R), K=K)
        out.append(mean_se(moe_iwae_looser(lw.lw, lw.mask)))
    return out


def iwae_curve(model, S, proposal, prior=None):
    "`iwae_log_likelihood` (06c_likelihoods) over R copies per K, with `proposal` (and optionally `prior`) as the model's."
    b = lg_batch(S, R)
    with patch.object(model, 'joint_posterior', proposal), patch.object(model, 'importance_proposal', proposal), \
            patch.object(model, 'prior', prior or model.prior):
        return [mean_se(iwae_log_likelihood(model, b, K=K, seed=K)) for K in KS]


def check_tightening_lower_bound(curve, truth, tol=0.01):
    for m, s in curve: assert m <= truth + 3 * s, f"estimate {m:.4f} ± {s:.4f} lies above log p(x) = {truth:.4f}"
    for (m0, s0), (m1, s1) in zip(curve, curve[1:]): assert m1 > m0 - 3 * math.hypot(s0, s1), f"{m1:.4f} < {m0:.4f}: not tightening"
    assert truth - curve[-1][0] < tol, f"largest K: {curve[-1][0]:.4f}, still {truth - curve[-1][0]:.4f} below log p(x)"


@pytest.fixture(scope='module')
def lg():
    return linear_gaussian_plus()


@pytest.mark.parametrize('S', SUBSETS)
def test_quadrature_matches_closed_form(lg, S):
    assert quadrature(lg, S)[0] == pytest.approx(exact_log_px(lg, S), abs=1e-6)


@pytest.mark.parametrize('S', SUBSETS)
def test_training_objective_is_iwae_for_one_modality_and_a_surrogate_above_log_px_for_two(lg, S):
    truth, L_inf = quadrature(lg, S)
    curve = training_curve(lg, S)
    for (m0, s0), (m1, s1) in zip(curve, curve[1:]): assert m1 > m0 - 3 * math.hypot(s0, s1)   # tightens with K ...
    assert all(m <= L_inf + 3 * s for m, s in curve) and abs(curve[-1][0] - L_inf) < 0.01      # ... towards L_inf
    if len(S) == 1:
        assert L_inf == pytest.approx(truth, abs=1e-6)               # the IWAE bound on log p(x_m)
        check_tightening_lower_bound(curve, truth)
    else:
        assert L_inf > truth + 0.3                                   # the surrogate exceeds log p(x_S) (0.43 nats here)
        with pytest.raises(AssertionError, match='lies above'): check_tightening_lower_bound(curve, truth)


def test_with_auxiliary_priors_equal_to_the_priors_the_objective_is_a_looser_bound():
    truth, L_inf = quadrature(linear_gaussian_plus(r_scale=1.0), ('a', 'b'))
    assert truth - 0.02 < L_inf < truth                              # MMVAE's looser bound: below, gap open at K = ∞


@pytest.mark.parametrize('S', SUBSETS)
def test_iwae_log_likelihood_is_a_tightening_lower_bound(lg, S):
    truth = exact_log_px(lg, S)
    check_tightening_lower_bound(iwae_curve(lg, S, lg.importance_proposal), truth)
    joint = iwae_curve(lg, S, lg.joint_posterior)                   # valid with r_d in unobserved blocks, but heavy-tailed
    assert all(m <= truth + 3 * s for m, s in joint)
    if len(S) == 1:
        with pytest.raises(AssertionError, match='still'): check_tightening_lower_bound(joint, truth)


def test_wrong_estimators_fail_the_check(lg):
    S, truth = ('a', 'b'), exact_log_px(lg, ('a', 'b'))
    q_of = lg.importance_proposal                                  # bound before the patch below replaces it
    fake = lambda log_prob: (lambda b: SimpleNamespace(sample=q_of(b).sample, log_prob=log_prob(b)))
    r = lg.aux()
    def no_aux(b):                                                 # r_d dropped from the proposal density
        _, qz, qw, _, slots = lg.experts(b)
        return lambda v: torch.logsumexp(torch.stack([_one(qz, e).log_prob(v[..., :1]).sum(-1) +
                                                      _one(qw, e).log_prob(v[..., 1 + s:2 + s]).sum(-1) for e, s in enumerate(slots)]), 0) - math.log(2)
    wrong = {'p(w_d) in the density, r_d in the samples': dict(proposal=fake(lambda b: linear_gaussian_plus(1.0).importance_proposal(b).log_prob)),
             'r_d dropped from the proposal density': dict(proposal=fake(no_aux)),
             'p(w_d) dropped from the prior': dict(proposal=lg.importance_proposal,
                                                   prior=lambda: SimpleNamespace(log_prob=lambda v: lg.prior_net.z().log_prob(v[..., :1])))}
    for name, kw in wrong.items():
        with pytest.raises(AssertionError): check_tightening_lower_bound(iwae_curve(lg, S, **kw), truth)
    check_tightening_lower_bound(iwae_curve(lg, S, lg.importance_proposal), truth)   # and the right one passes


@torch.no_grad()
def test_evaluation_weight_equals_training_weight_for_one_modality(lg):
    for S in SUBSETS:
        b = lg_batch(S, 3); seed_everything(7); out = lg.log_weights(b, K=5)
        lw_eval = lg.prior().log_prob(out.v) + sum(lg.likelihoods(out.v, S)[n].log_prob(b.data[n]) for n in S) \
            - lg.importance_proposal(b).log_prob(out.v)
        if len(S) == 1: assert torch.allclose(lw_eval, out.lw, atol=1e-10)
        else: assert (lw_eval - out.lw).abs().max() > 0.1


def test_importance_proposal_blocks():
    model, batch = make_model(K=2), make_batch()                    # Laplace family, Dw = 3, items with x or y hidden
    with torch.no_grad(): model.aux_prior['y'].raw_scale.copy_(torch.tensor([1., 0., -1.]))
    q, j = model.importance_proposal(batch), model.joint_posterior(batch)
    ry, pw = model.aux_prior['y']().base_dist, model.prior_net.w().base_dist
    yb = slice(DZ + DW, DZ + 2 * DW)
    x_expert = q.experts[0].base_dist
    for b in range(5):
        want = ry.scale if MASK[b, 1] else pw.scale                  # y observed: r_y; y hidden: p(w_y)
        assert torch.allclose(x_expert.scale[b, yb], want)
        assert torch.allclose(j.experts[0].base_dist.scale[b, yb], ry.scale)   # the joint posterior keeps r_y for generation
    assert torch.equal(q.mask, j.mask) and torch.allclose(q.mean, j.mean)
    v = q.sample((4,))
    assert q.log_prob(v).shape == (4, 5) and torch.isfinite(q.log_prob(v)).all()
