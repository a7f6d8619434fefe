"Toy networks and data shared by the model tests: linear encoders/decoders and a small latent-structured problem."
import math
import torch
from torch import nn
from mmvae_nb.core import Batch, ModalitySpec
from mmvae_nb.models import Modality


class LinearEncoder(nn.Module):
    "x -> (loc, raw scale) through one linear layer."
    def __init__(self, d_in, D): super().__init__(); self.f = nn.Linear(d_in, 2 * D)
    def forward(self, x): return self.f(x.flatten(1).float()).chunk(2, -1)


class LinearDecoder(nn.Module):
    "z -> sigmoid(linear(z)) shaped like one item."
    def __init__(self, D, shape): super().__init__(); self.shape = shape; self.f = nn.Linear(D, math.prod(shape))
    def forward(self, z): return torch.sigmoid(self.f(z)).view(-1, *self.shape)


def toy_modality(spec: ModalitySpec, D: int, **kw) -> Modality:
    return Modality(spec, LinearEncoder(math.prod(spec.shape), D), LinearDecoder(D, spec.shape), **kw)


def latent_problem(shapes: dict, N: int = 256, D: int = 2, seed: int = 0):
    "Items generated from a D-dim latent through random sigmoid-linear maps; the first and second quarter each miss one modality."
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N, D, generator=g)
    data = {n: torch.sigmoid(z @ (torch.randn(D, math.prod(s), generator=g) * 2)).view(N, *s) for n, s in shapes.items()}
    mask = torch.ones(N, len(shapes), dtype=torch.bool)
    mask[:N // 4, 1] = False; mask[N // 4:N // 2, 0] = False
    return data, mask


def assert_loss_falls(model, data: dict, mask, steps: int = 60, batch_size: int = 64, lr: float = 1e-2, margin: float = 0.5):
    "Adam steps on random minibatches; the mean of the last 10 losses must be `margin` below the first 10."
    opt, losses, N = torch.optim.Adam(model.parameters(), lr=lr), [], len(mask)
    for _ in range(steps):
        idx = torch.randint(0, N, (batch_size,))
        loss, _ = model.loss(Batch({n: x[idx] for n, x in data.items()}, mask[idx], tuple(data)))
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - margin, f"loss did not fall: first 10 steps {first:.2f}, last 10 {last:.2f}"
    return losses


def nan_hidden(batch: Batch) -> Batch:
    "The batch with every unobserved entry replaced by NaN (a leak would turn results into NaN)."
    return Batch({n: torch.where(batch.observed(n).view(-1, *[1] * (x.ndim - 1)), x, float('nan')) for n, x in batch.data.items()},
                 batch.mask, batch.names, batch.labels, batch.index)


def assert_unobserved_gets_no_gradient(model, batch: Batch, hidden: str):
    "With `hidden` unobserved (and NaN) in every item, its networks get exactly zero gradient; the others some."
    mask = torch.tensor([n != hidden for n in batch.names]).expand(len(batch), -1)   # every other modality observed
    b = nan_hidden(Batch(batch.data, mask, batch.names))
    model.zero_grad(); model.loss(b)[0].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in model.mods[hidden].parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for n in batch.names if n != hidden
               for p in model.mods[n].parameters())


def assert_loss_ignores_hidden(model, batch: Batch, seed: int = 3):
    "The loss is the same when unobserved entries are NaN, and every gradient stays finite."
    torch.manual_seed(seed); l1, _ = model.loss(batch)
    torch.manual_seed(seed); l2, _ = model.loss(nan_hidden(batch))
    assert torch.allclose(l1, l2)
    model.zero_grad(); l2.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
