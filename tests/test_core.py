"mmvae_nb.core, independently of the notebook: stable log-sum-exp, seeding, devices, checks, atomic writes, batches."
import math, os
import pytest, torch
from mmvae_nb.core import (default_device, seed_everything, check_positive, check_finite, log_sum_exp, log_mean_exp,
                           atomic_write, atomic_torch_save, ModalitySpec, Batch)


@pytest.mark.parametrize('c', [-1e4, 1e4])
def test_log_sum_exp_stable_where_naive_fails(c):
    b = torch.tensor([0., -1., -2., 0.5])
    x = (c + b).float()
    naive = torch.log(torch.exp(x).sum())
    assert not torch.isfinite(naive)                                   # underflow to -inf or overflow to +inf
    exact = c + math.log(sum(math.exp(v) for v in b.tolist()))
    assert abs(log_sum_exp(x).item() - exact) < 1e-2
    assert torch.allclose(log_sum_exp(x), torch.logsumexp(x, -1))

def test_log_sum_exp_minus_infinity_entries():
    x = torch.tensor([[0., -math.inf, math.log(3.)], [-math.inf] * 3])
    out = log_sum_exp(x)
    assert math.isclose(out[0].item(), math.log(4.), rel_tol=1e-6) and out[1].item() == -math.inf
    assert not torch.isnan(out).any()

def test_log_sum_exp_empty_row_has_zero_gradient_where_torch_gives_nan():
    x = torch.tensor([[0., -math.inf, math.log(3.)], [-math.inf] * 3])
    a = x.clone().requires_grad_(); log_sum_exp(a).sum().backward()
    assert torch.allclose(a.grad[0], torch.tensor([0.25, 0., 0.75])) and torch.equal(a.grad[1], torch.zeros(3))
    a = x.clone().requires_grad_(); log_mean_exp(a).sum().backward()
    assert torch.isfinite(a.grad).all()
    b = x.clone().requires_grad_(); torch.logsumexp(b, -1).sum().backward()
    assert torch.isnan(b.grad[1]).all()      # the reason the library does not call torch.logsumexp directly

def test_log_mean_exp_is_lse_minus_log_k_and_gradient_is_softmax():
    a = (torch.randn(4, 9, dtype=torch.float64) * 1e4).requires_grad_()
    assert torch.allclose(log_mean_exp(a, 1), torch.logsumexp(a, 1) - math.log(9))
    log_sum_exp(a, dim=1).sum().backward()
    assert torch.allclose(a.grad, torch.softmax(a.detach(), 1))
    with pytest.raises(ValueError, match='empty dimension'): log_mean_exp(torch.zeros(3, 0), 1)

def test_seed_and_device():
    seed_everything(3); a = torch.rand(5)
    seed_everything(3); assert torch.equal(torch.rand(5), a)
    assert default_device('cpu') == torch.device('cpu')
    assert default_device().type == ('cuda' if torch.cuda.is_available() else 'cpu')

def test_checks_name_the_problem():
    with pytest.raises(ValueError, match='scale must be positive'): check_positive(torch.tensor([1., 0.]), 'scale')
    with pytest.raises(ValueError, match='scale must be positive'): check_positive(torch.tensor([float('nan')]), 'scale')
    with pytest.raises(FloatingPointError, match='loss is not finite'): check_finite(torch.tensor([math.inf]), 'loss')
    check_positive(torch.ones(2, device='meta'))                        # no values on meta: skipped, no error

def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / 'a' / 'x.pt'
    atomic_torch_save({'v': torch.arange(4)}, p)
    with pytest.raises(RuntimeError):
        with atomic_write(p) as f: f.write(b'partial'); raise RuntimeError('killed')
    assert torch.equal(torch.load(p)['v'], torch.arange(4))
    assert [q.name for q in p.parent.iterdir()] == ['x.pt']
    umask = os.umask(0); os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask

def test_modality_spec_and_batch_validation():
    with pytest.raises(ValueError, match="unknown kind 'audio'"): ModalitySpec('x', (3,), 'audio')
    with pytest.raises(ValueError, match='needs n_classes'): ModalitySpec('y', (), 'categorical')
    mask = torch.tensor([[1, 0], [1, 1]]).bool()
    b = Batch({'a': torch.zeros(2, 3), 'b': torch.ones(2, 1)}, mask, ('a', 'b'))
    assert b.observed('b').tolist() == [False, True] and len(b.subset(b.observed('b'))) == 1
    with pytest.raises(ValueError, match="has 3 items but the mask has 2"):
        Batch({'a': torch.zeros(3, 3)}, mask, ('a', 'b'))
    with pytest.raises(ValueError, match="mask must be bool"):
        Batch({'a': torch.zeros(2, 3)}, mask.long(), ('a', 'b'))
