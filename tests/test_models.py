"The shared model interface (`mmvae_nb.models`), checked independently of the notebook."
import math, copy
import pytest, torch
from torch import nn
from torch.distributions import Independent, Normal, Laplace
from mmvae_nb.core import ModalitySpec, Batch
from mmvae_nb.models import (likelihood_dist, Modality, UniformMixture, Prior, MultimodalVAE, posterior_dist, meta_step)
from mmvae_nb.distributions import product_of_experts


from toy import LinearEncoder as Enc, LinearDecoder as Dec

class PoEModel(MultimodalVAE):
    def joint_posterior(self, batch):
        qs = self.unimodal_posteriors(batch); names = list(qs)
        loc, scale = product_of_experts(torch.stack([qs[n].base_dist.loc for n in names]),
                                        torch.stack([qs[n].base_dist.scale for n in names]),
                                        mask=torch.stack([batch.observed(n) for n in names], -1))
        return Independent(Normal(loc, scale), 1)
    def loss(self, batch):
        self.check_batch(batch)
        q = self.joint_posterior(batch); z = q.rsample()
        elbo = sum(self.log_likelihoods(batch, z).values()) - torch.distributions.kl_divergence(q, self.prior())
        return -elbo.mean(), {'elbo': elbo.mean().detach()}

@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    specs = [ModalitySpec('s', (1, 4, 4)), ModalitySpec('t', (3, 2, 2))]
    model = PoEModel([Modality(sp, Enc(math.prod(sp.shape), 3), Dec(3, sp.shape)) for sp in specs], latent_dim=3)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]]).bool()
    return model, Batch({'s': torch.rand(4, 1, 4, 4), 't': torch.rand(4, 3, 2, 2)}, mask, ('s', 't'))

@pytest.mark.parametrize('fam,D', [('laplace', Laplace), ('normal', Normal)])
def test_fixed_scale_likelihood_matches_torch(fam, D):
    loc, x = torch.rand(5, 3, 2, 6, 6, dtype=torch.float64), torch.rand(3, 2, 6, 6, dtype=torch.float64)
    ref = Independent(D(loc, torch.full_like(loc, 0.75)), 3).log_prob(x)
    assert torch.allclose(likelihood_dist(fam, loc, 3, 0.75).log_prob(x), ref)
    with torch.no_grad(): assert torch.allclose(likelihood_dist(fam, loc, 3, 0.75).log_prob(x), ref)
    # gradients too
    l1 = loc.clone().requires_grad_(); likelihood_dist(fam, l1, 3, 0.75).log_prob(x).sum().backward()
    l2 = loc.clone().requires_grad_(); Independent(D(l2, torch.full_like(l2, 0.75)), 3).log_prob(x).sum().backward()
    assert torch.allclose(l1.grad, l2.grad)

def test_chunked_decoding_is_exact():
    torch.manual_seed(0)
    m = Modality(ModalitySpec('a', (2, 3)), nn.Identity(), nn.Sequential(nn.Linear(4, 6), nn.Unflatten(1, (2, 3))))
    z = torch.randn(7, 9, 4)
    for chunk in (0, 1, 5, 63, 64, 1000):
        assert torch.allclose(m.likelihood(z, chunk).mean, m.likelihood(z, 0).mean)

def test_uniform_mixture_sampling_and_density():
    torch.manual_seed(0)
    locs = torch.tensor([[-4.], [0.], [4.]])
    experts = [Independent(Normal(locs[i].expand(2, 1), torch.ones(2, 1)), 1) for i in range(3)]
    mask = torch.tensor([[True, False, True], [False, True, False]])
    mix = UniformMixture(experts, mask)
    z = mix.sample((20000,))
    assert torch.allclose((z[:, 0] > 0).float().mean(), torch.tensor(0.5), atol=0.02)   # experts 0 and 2 only
    assert torch.allclose(z[:, 1].mean(), torch.tensor(0.), atol=0.05)                 # expert 1 only
    zz = torch.tensor([[1.3], [0.2]])
    dens = [sum(math.exp(Normal(locs[i, 0], 1.).log_prob(zz[b, 0]).item()) for i in range(3) if mask[b, i]) / int(mask[b].sum())
            for b in range(2)]
    assert torch.allclose(mix.log_prob(zz), torch.tensor(dens).log(), atol=1e-5)

def test_prior_initial_scale_is_one():
    for fam in ('normal', 'laplace_softmax'):
        for learn in (False, True):
            p = Prior(5, fam, learn)()
            assert torch.allclose(p.base_dist.scale, torch.ones(5), atol=1e-5)
            assert (len(list(Prior(5, fam, learn).parameters())) == 1) == learn

def test_missing_modality_never_leaks(model_and_batch):
    model, batch = model_and_batch
    t2 = batch.data['t'].clone(); t2[1] = float('nan')          # item 1 does not observe t
    b2 = Batch({'s': batch.data['s'], 't': t2}, batch.mask, batch.names)
    assert torch.allclose(model.joint_posterior(batch).mean, model.joint_posterior(b2).mean)
    model.zero_grad(); model.loss(b2)[0].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    full = Batch(batch.data, torch.ones(4, 2, dtype=torch.bool), batch.names)
    t3 = torch.rand_like(batch.data['t'])
    e1 = model.embed(full, given=['s'])
    e2 = model.embed(Batch({'s': batch.data['s'], 't': t3}, full.mask, batch.names), given=['s'])
    assert torch.equal(e1, e2)

def test_generic_methods(model_and_batch):
    model, batch = model_and_batch
    full = Batch(batch.data, torch.ones(4, 2, dtype=torch.bool), batch.names)
    assert model.sample(6)['s'].shape == (6, 1, 4, 4)
    assert model.generate(full, ['t'], ['s'])['s'].shape == (4, 1, 4, 4)
    assert set(model.reconstruct(full)) == {'s', 't'}
    assert model.embed(full).shape == (4, 3)

def test_bad_input_errors(model_and_batch):
    model, batch = model_and_batch
    with pytest.raises(ValueError, match=r"unknown modalities \['u'\]"):
        model.loss(Batch({'s': batch.data['s'], 'u': torch.rand(4, 2)}, torch.ones(4, 3).bool(), ('s', 't', 'u')))
    with pytest.raises(ValueError, match=r"expects items of shape \(1, 4, 4\)"):
        model.loss(Batch({'s': torch.rand(4, 1, 5, 5), 't': batch.data['t']}, batch.mask, batch.names))
    with pytest.raises(ValueError, match="at least one observed modality"):
        model.loss(Batch(batch.data, torch.tensor([[1, 1], [0, 0], [1, 0], [0, 1]]).bool(), batch.names))
    with pytest.raises(ValueError, match="observe none of the given modalities"):
        model.generate(batch, ['s'])
    with pytest.raises(ValueError, match="expects floating-point"):
        model.loss(Batch({'s': (batch.data['s'] * 255).to(torch.uint8), 't': batch.data['t']}, batch.mask, batch.names))

def test_meta_device_step(model_and_batch):
    model, batch = model_and_batch
    assert meta_step(copy.deepcopy(model), batch) == ()


def test_continuous_bernoulli_is_normalised_and_bernoulli_is_not():
    "02_elbo's argument: BCE on grey levels misses probability mass; the continuous Bernoulli integrates to one."
    from mmvae_nb.models import likelihood_dist
    grid = torch.linspace(0, 1, 20001)
    for lam in (0.2, 0.5, 0.97):
        logit = torch.full_like(grid, math.log(lam / (1 - lam)))
        cb = likelihood_dist('continuous_bernoulli', logit, event_dims=0).log_prob(grid).exp()
        b = likelihood_dist('bernoulli', logit, event_dims=0).log_prob(grid).exp()
        assert abs(torch.trapezoid(cb, grid).item() - 1) < 1e-3
        assert torch.trapezoid(b, grid).item() < 0.75
