"Checks of mmvae_nb.explorers: every explorer redraws when a control is set from code, no figure stays open, the widget panel in a (simulated) kernel, the static fallback."
import io
import sys
from unittest import mock

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mmvae_nb.core import ModalitySpec
from mmvae_nb.ebm_prior import EBMPrior
from mmvae_nb.explorers import (WIDGETS_ENV, Control, cross_generation_explorer, explore, langevin_explorer,
                                latent_traversal_explorer, relatedness_explorer, widget_frontend)
from mmvae_nb.models import MultimodalVAE, UniformMixture
from mmvae_nb.multimodal import MultimodalDataset

from toy import toy_modality

SPECS = (ModalitySpec('img', (1, 8, 8), 'image'), ModalitySpec('feat', (5,), 'features'))


class TinyMoE(MultimodalVAE):
    def joint_posterior(self, batch):
        qs = self.unimodal_posteriors(batch)
        return UniformMixture(list(qs.values()), torch.stack([batch.observed(n) for n in qs], -1))


class FakeKernelShell:
    kernel = object()                                   # what the shell of a Jupyter kernel carries


def pixels(fig) -> np.ndarray:
    buf = io.BytesIO(); fig.savefig(buf, format='rgba', dpi=20)
    return np.frombuffer(buf.getvalue(), np.uint8)


@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    model = TinyMoE([toy_modality(s, 3) for s in SPECS], latent_dim=3)
    ds = MultimodalDataset({'img': torch.rand(30, 1, 8, 8), 'feat': torch.rand(30, 5)}, SPECS, torch.arange(30) % 10, name='tiny')
    return model, ds


@pytest.fixture(autouse=True)
def no_open_figures(monkeypatch):
    monkeypatch.delenv(WIDGETS_ENV, raising=False)
    plt.close('all')
    yield
    assert plt.get_fignums() == [], 'an explorer left a figure open in pyplot'


def changed(ex, control, value) -> bool:
    before, fig = pixels(ex.figure), ex.figure
    getattr(ex, control).value = value
    return ex.figure is not fig and not np.array_equal(pixels(ex.figure), before)


def test_latent_traversal_explorer_redraws(setup):
    model, ds = setup
    ex = latent_traversal_explorer(model, ds, n_dims=2)
    assert changed(ex, 'item', 4) and changed(ex, 'span', 6.) and changed(ex, 'dim', 1) and changed(ex, 'source', 'img')
    assert ex.figure.axes[0].get_title() == 'feat from img, item 4: z1..z2 over \u00b16 prior sd'
    ex.close()


def test_cross_generation_explorer_redraws(setup):
    model, ds = setup
    other = TinyMoE([toy_modality(SPECS[0], 3)], latent_dim=3)              # only 'img' and 8 items: the controls follow
    img8 = MultimodalDataset({'img': ds.data['img'][:8]}, SPECS[:1], torch.arange(8), name='img8')
    ex = cross_generation_explorer({'tiny': (model, ds), 'img only': (other, img8)}, n_samples=1)
    ex.source.value = 'feat'
    assert changed(ex, 'item', 9)
    shown = pixels(ex.figure)
    ex.item.value = 2; ex.item.value = 9                                   # seeded samples: the same choice, the same picture
    assert np.array_equal(pixels(ex.figure), shown)
    ex.model.value = 'img only'
    assert list(ex.source.options) == ['img'] and ex.source.value == 'img' and (ex.item.value, ex.item.max) == (7, 7)
    assert ex.figure.axes[0].get_title(loc='left') == 'img only | img: item 7 (label 7)'
    ex.close()


def test_relatedness_explorer_redraws(setup):
    model, ds = setup
    ex = relatedness_explorer(model, ds, 'img', 'feat', n_batches=1, batch_size=30)
    assert changed(ex, 'j', 10)
    assert ex.related                                                      # labels 0 and 10 % 10 = 0
    d = ex.w2
    assert ex.figure.axes[2].lines[0].get_xdata()[0] == pytest.approx(d)
    assert 0 <= ex.closer <= 1
    ex.close()


def test_langevin_explorer_redraws(setup):
    model, _ = setup
    log_density = lambda z: -0.5 * ((z - 2) ** 2).sum(-1)                   # N((2, 2), I): the chains drift towards (2, 2)
    ex = langevin_explorer(log_density, n_chains=50, n_steps=30, step_size=0.3)
    assert changed(ex, 'step', 30)
    assert ex.chains.shape == (31, 50, 2) and float(ex.chains[-1].mean()) > 1.3 > float(ex.chains[0].mean())
    ex.close()
    ebm = EBMPrior(model, n_steps=5, hidden=(8,))
    ex = langevin_explorer(ebm, n_show=4)                                  # its own 5 steps
    assert ex.chains.shape == (6, 4, 3) and changed(ex, 'step', 5)
    ex.close()


def test_panel_in_a_kernel(setup, capsys):
    model, ds = setup
    ex = cross_generation_explorer({'tiny': model}, ds, n_samples=1)
    shown = []
    with mock.patch('IPython.display.display', lambda obj, *a, **k: shown.append(obj)), \
         mock.patch('IPython.get_ipython', lambda: FakeKernelShell()):
        assert widget_frontend()
        ex.show()
        assert shown[-1] is ex.widget and shown[-2] is ex.figure           # the figure into the panel, then the panel
        ex.item.value = 3                                                  # live: each redraw goes into the panel
        assert shown[-1] is ex.figure and len(shown) == 3
        with mock.patch.dict('os.environ', {WIDGETS_ENV: '0'}):
            assert not widget_frontend()
        def fails(ex): raise ValueError('item 4 does not observe img')
        ex._draw = fails
        ex.item.value = 4                                                  # live: the error is shown in the panel, not raised
        assert 'ValueError: item 4 does not observe img' in capsys.readouterr().out
    ex.close()


def test_static_fallback(setup):
    model, ds = setup
    assert not widget_frontend()                                           # pytest: no kernel
    shown = []
    with mock.patch('IPython.display.display', lambda obj, *a, **k: shown.append(obj)):
        ex = latent_traversal_explorer(model, ds)
        ex.show()
        assert shown == [ex.figure]
        with mock.patch.dict(sys.modules, {'ipywidgets': None}):           # ipywidgets missing: stand-in controls
            ex2 = latent_traversal_explorer(model, ds)
            assert isinstance(ex2.item, Control) and ex2.widget is None and changed(ex2, 'item', 7)
            ex2.show()
            assert shown[-1] is ex2.figure
    ex.close()


def test_explore_keeps_the_old_panel(setup):
    model, ds = setup
    with mock.patch('IPython.display.display', lambda *a, **k: None):
        panel = explore({'tiny': model}, ds)
        assert len(panel.children) == 2
        panel.children[0].children[2].value = 5                            # changing the item redraws without error


def test_bad_input_is_named(setup):
    model, ds = setup
    with pytest.raises(ValueError, match="unknown source 'audio'"):
        latent_traversal_explorer(model, ds, source='audio')
    with pytest.raises(ValueError, match='pass the dataset'):
        cross_generation_explorer({'tiny': model})
    with pytest.raises(ValueError, match='takes a 2-D log density'):
        langevin_explorer(3)
    with pytest.raises(ValueError, match="target: 'nope' is not one of"):
        Control('a', 'target', options=['a']).value = 'nope'
