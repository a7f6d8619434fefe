"""Tests of mmvae_nb.data on tiny files written here in every raw format (independent writers), plus
real-data checks (marked `realdata`) that run when MMVAE_NB_DATA points at the shared data folder."""
import gzip, hashlib, os, struct, zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import soundfile as sf
import torch
from PIL import Image

import mmvae_nb.data as D


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope='module', autouse=True)
def session_cache(tmp_path_factory):
    """A temporary cache for this module's tests so the developer's cache is never touched. Module scope: a session
    fixture would stay set after this module, and send every later test of the worker (the reference classifiers')
    to a throw-away cache."""
    with pytest.MonkeyPatch.context() as mp:
        d = tmp_path_factory.mktemp('mmvae_cache')
        mp.setenv('MMVAE_NB_CACHE', str(d))
        yield d


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    "Any download attempt fails the test unless a test installs its own fake."
    def refuse(*a, **k): raise AssertionError(f'network access attempted: {a}')
    monkeypatch.setattr(D, 'download_file', refuse)


def md5(p): return hashlib.md5(Path(p).read_bytes()).hexdigest()
def sha256(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def idx_gz(path, a):
    "Independent IDX writer (uint8 only)."
    a = np.asarray(a, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, 'wb') as f:
        f.write(struct.pack('>BBBB', 0, 0, 8, a.ndim) + struct.pack('>' + 'I' * a.ndim, *a.shape) + a.tobytes())


def cdb_bytes(images, labels, fixed_hw=None):
    "Independent Hoda CDB encoder (binary images; fixed_hw writes the size in the header instead of per record)."
    H, W = fixed_hw or (0, 0)
    counts = np.bincount(np.asarray(labels), minlength=128)
    head = struct.pack('<HBBBBI', 2007, 1, 2, H, W, len(images)) + struct.pack('<128I', *counts) + b'\x00' + b'c' * 256 + b'\x00' * 245
    assert len(head) == 1024
    out = bytearray(head)
    for im, lab in zip(images, labels):
        runs = []
        for row in np.asarray(im) > 0:
            # white run, black run, ... ; a row starting with ink begins with a white run of 0
            change = np.flatnonzero(np.diff(np.r_[0, row.astype(int)])) .tolist() + [len(row)]
            pos = 0
            for c in change:
                runs.append(c - pos); pos = c
        out += bytes([0xFF, lab]) + (b'' if fixed_hw else bytes([im.shape[1], im.shape[0]])) + struct.pack('<H', len(runs)) + bytes(runs)
    return bytes(out)


# ---------------------------------------------------------------- roots, verification, downloads

def test_roots_from_argument_env_default(monkeypatch, tmp_path):
    monkeypatch.delenv('MMVAE_NB_DATA', raising=False)
    assert D.data_root(tmp_path / 'a') == tmp_path / 'a'
    assert D.data_root().parts[-2:] == ('mmvae_nb', 'data')
    monkeypatch.setenv('MMVAE_NB_DATA', str(tmp_path / 'env'))
    assert D.data_root() == tmp_path / 'env'
    monkeypatch.setenv('MMVAE_NB_CACHE', str(tmp_path / 'c'))
    assert D.cache_dir() == tmp_path / 'c' and (tmp_path / 'c').is_dir()


def test_present_files_need_no_network(tmp_path):
    (tmp_path / 'ds').mkdir(); (tmp_path / 'ds/f.bin').write_bytes(b'x' * 10)
    spec = D.RawFile('f.bin', url='https://example.invalid/f.bin', md5=md5(tmp_path / 'ds/f.bin'), size=10)
    assert D.ensure_files('ds', [spec], tmp_path) == {'f.bin': tmp_path / 'ds/f.bin'}   # the autouse fixture refuses downloads


def test_download_only_missing(tmp_path, monkeypatch):
    calls = []
    def fake(url, folder, filename, md5=None):
        calls.append(filename); Path(folder).mkdir(parents=True, exist_ok=True); (Path(folder) / filename).write_bytes(b'new')
    monkeypatch.setattr(D, 'download_file', fake)
    (tmp_path / 'ds').mkdir(); (tmp_path / 'ds/a').write_bytes(b'old')
    specs = [D.RawFile('a', url='u://a'), D.RawFile('b', url='u://b', sha256=hashlib.sha256(b'new').hexdigest())]
    paths = D.ensure_files('ds', specs, tmp_path)
    assert calls == ['b'] and paths['b'].read_bytes() == b'new'


def test_missing_files_error_names_files_and_folder(tmp_path, monkeypatch):
    specs = [D.RawFile('x.gz'), D.RawFile('y.gz', url='u://y')]
    with pytest.raises(D.MissingDataError) as e:
        D.ensure_files('sub/dir', specs, tmp_path, download=False)
    msg = str(e.value)
    assert 'x.gz' in msg and 'y.gz' in msg and str(tmp_path / 'sub/dir') in msg and 'download=False' in msg
    assert isinstance(e.value, FileNotFoundError)
    # a failed download is reported with its URL and reason
    def boom(*a, **k): raise OSError('unreachable')
    monkeypatch.setattr(D, 'download_file', boom)
    with pytest.raises(D.MissingDataError, match=r'download from u://y failed: OSError: unreachable'):
        D.ensure_files('sub/dir', specs, tmp_path)
    # a read-only root is never written to: no download is even attempted
    monkeypatch.setattr(D, '_writable', lambda p: False)
    monkeypatch.setattr(D, 'download_file', lambda *a, **k: pytest.fail('downloaded into a read-only root'))
    with pytest.raises(D.MissingDataError, match='read-only'):
        D.ensure_files('sub/dir', specs, tmp_path)


def test_bad_checksum_and_size(tmp_path):
    (tmp_path / 'ds').mkdir(); p = tmp_path / 'ds/f'; p.write_bytes(b'abc')
    with pytest.raises(D.ChecksumError) as e:
        D.ensure_files('ds', [D.RawFile('f', md5='1' * 32)], tmp_path)
    assert str(p) in str(e.value) and '1' * 32 in str(e.value) and md5(p) in str(e.value)
    with pytest.raises(D.ChecksumError, match='sha256 mismatch'):
        D.ensure_files('ds', [D.RawFile('f', sha256='2' * 64)], tmp_path)
    with pytest.raises(D.ChecksumError, match='expected 4 bytes, got 3'):
        D.ensure_files('ds', [D.RawFile('f', size=4)], tmp_path)


def test_digest_cache_avoids_rehash_and_sees_changes(tmp_path, monkeypatch):
    p = tmp_path / 'f'; p.write_bytes(b'abc')
    assert D.file_digest(p, 'sha256') == sha256(p)
    real = D._hash_file
    monkeypatch.setattr(D, '_hash_file', lambda *a: pytest.fail('rehashed an unchanged file'))
    assert D.file_digest(p, 'sha256') == sha256(p)
    p.write_bytes(b'abcdef')                        # changed size -> rehash
    monkeypatch.setattr(D, '_hash_file', real)
    assert D.file_digest(p, 'sha256') == sha256(p)


# ---------------------------------------------------------------- IDX: MNIST, Fashion, Kannada

def test_mnist_tiny_and_cache_invalidation(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    y = np.array([0, 1, 2, 3, 4, 5, 6], np.uint8)
    raw = tmp_path / 'MNIST/raw'
    idx_gz(raw / 'train-images-idx3-ubyte.gz', x); idx_gz(raw / 'train-labels-idx1-ubyte.gz', y)
    # with the published md5s (and sizes) the tiny files are rejected
    with pytest.raises(D.ChecksumError, match='train-images-idx3-ubyte.gz'):
        D.load_mnist('train', root=tmp_path)
    # no checksums: content changes must still invalidate the cache (keys use the files' digests)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(D.MNIST_FILES, 'train', (D.RawFile('train-images-idx3-ubyte.gz'), D.RawFile('train-labels-idx1-ubyte.gz')))
        s = D.load_mnist('train', root=tmp_path)
        assert s.images.dtype == torch.uint8 and s.images.shape == (7, 1, 28, 28) and s.labels.dtype == torch.int64
        assert np.array_equal(s.images[:, 0].numpy(), x) and s.labels.tolist() == y.tolist()
        assert D.load_mnist('train', root=tmp_path).labels.tolist() == y.tolist()       # from the cache
        idx_gz(raw / 'train-labels-idx1-ubyte.gz', y[::-1])
        assert D.load_mnist('train', root=tmp_path).labels.tolist() == y[::-1].tolist()
    with pytest.raises(ValueError, match="unknown split"):
        D.load_mnist('dev', root=tmp_path)


def test_read_idx_rejects_truncated(tmp_path):
    p = tmp_path / 'x.gz'
    with gzip.open(p, 'wb') as f: f.write(struct.pack('>BBBBII', 0, 0, 8, 2, 3, 3) + b'\x00' * 8)
    with pytest.raises(ValueError, match='header says'):
        D.read_idx(p)


def test_fashion_from_system_dir_checks_content(tmp_path, monkeypatch):
    sysdir = tmp_path / 'sys'
    idx_gz(sysdir / 't10k-images-idx3-ubyte.gz', np.full((2, 28, 28), 9)); idx_gz(sysdir / 't10k-labels-idx1-ubyte.gz', [7, 9])
    content = {n: hashlib.md5(gzip.open(sysdir / n).read()).hexdigest() for n in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
    monkeypatch.setattr(D, 'FASHION_CONTENT_MD5', {**D.FASHION_CONTENT_MD5, **content})
    s = D.load_fashion_mnist('test', root=tmp_path / 'empty', system_dir=sysdir)
    assert s.labels.tolist() == [7, 9] and int(s.images.max()) == 9
    # re-gzipping the same content (different .gz bytes) still verifies; different content does not
    data = gzip.open(sysdir / 't10k-labels-idx1-ubyte.gz').read()
    (sysdir / 't10k-labels-idx1-ubyte.gz').write_bytes(gzip.compress(data, compresslevel=1, mtime=123))
    assert D.load_fashion_mnist('test', root=tmp_path / 'empty', system_dir=sysdir).labels.tolist() == [7, 9]
    idx_gz(sysdir / 't10k-labels-idx1-ubyte.gz', [7, 8])
    with pytest.raises(D.ChecksumError, match='decompressed'):
        D.load_fashion_mnist('test', root=tmp_path / 'empty', system_dir=sysdir)


def test_kannada_missing_train_images(tmp_path):
    with pytest.raises(D.MissingDataError) as e:
        D.load_kannada('train', root=tmp_path, download=False)
    assert 'X_kannada_MNIST_train-idx3-ubyte.gz' in str(e.value) and str(tmp_path / 'kannada-mnist') in str(e.value)


# ---------------------------------------------------------------- Hoda

def hoda_images():
    rng = np.random.default_rng(1)
    ims = [(rng.random((h, w)) < 0.5).astype(np.uint8) * 255 for h, w in [(6, 9), (13, 4), (1, 1), (5, 5), (40, 30)]]
    ims[3][:] = 255; ims[3][2] = 0                       # all-ink rows and an all-white row
    return ims


@pytest.mark.parametrize('fixed', [False, True])
def test_cdb_decoder_roundtrip(tmp_path, fixed):
    ims = hoda_images() if not fixed else [np.eye(4, 6, k=i, dtype=np.uint8) * 255 for i in range(3)]
    labels = list(range(len(ims)))
    (tmp_path / 'a.cdb').write_bytes(cdb_bytes(ims, labels, (4, 6) if fixed else None))
    out, labs = D.read_cdb(tmp_path / 'a.cdb')
    assert labs.tolist() == labels
    for a, b in zip(out, ims): np.testing.assert_array_equal(a, b)


def test_cdb_rejects_non_binary_and_truncated(tmp_path):
    b = bytearray(cdb_bytes(hoda_images(), [0] * 5)); b[522] = 1
    (tmp_path / 'g.cdb').write_bytes(bytes(b))
    with pytest.raises(ValueError, match='image type 1'):
        D.read_cdb(tmp_path / 'g.cdb')
    (tmp_path / 't.cdb').write_bytes(cdb_bytes(hoda_images(), [0] * 5)[:-3])
    with pytest.raises(ValueError):
        D.read_cdb(tmp_path / 't.cdb')


def test_fit_to_canvas_keeps_aspect_and_ink():
    wide = np.full((10, 40), 255, np.uint8)
    out = D.fit_to_canvas([wide, wide.T], box=20, size=28)
    assert out.shape == (2, 1, 28, 28) and out.dtype == torch.uint8
    r, c = np.nonzero(out[0, 0].numpy()); assert (np.ptp(r) + 1, np.ptp(c) + 1) == (5, 20)
    r, c = np.nonzero(out[1, 0].numpy()); assert (np.ptp(r) + 1, np.ptp(c) + 1) == (20, 5)
    assert abs((c.min() + c.max()) / 2 - 13.5) <= 0.5 and abs((r.min() + r.max()) / 2 - 13.5) <= 0.5
    # antialiasing: a 1-px stroke shrunk 3x keeps its ink (x 1/9) instead of vanishing
    line = np.zeros((60, 60), np.uint8); line[:, 30] = 255
    assert abs(D.fit_to_canvas([line])[0].float().sum().item() - 255 * 60 / 9) < 0.03 * 255 * 60 / 9
    with pytest.raises(ValueError, match='box'):
        D.fit_to_canvas([wide], box=30, size=28)


def test_load_hoda_mat_and_cdb(tmp_path, monkeypatch):
    ims = hoda_images()
    (tmp_path / 'hoda').mkdir()
    cell = np.empty((len(ims), 1), object)
    for i, im in enumerate(ims): cell[i, 0] = (im > 0).astype(np.uint8)      # {0,1} in this .mat: normalised to 255
    scipy.io.savemat(tmp_path / 'hoda/Data_hoda_full.mat', {'Data': cell, 'labels': np.arange(len(ims)).reshape(-1, 1)})
    (tmp_path / 'hoda/RemainingSamples.cdb').write_bytes(cdb_bytes(ims, list(range(len(ims)))))
    monkeypatch.setitem(D.HODA_FILES, 'train', D.RawFile('Data_hoda_full.mat', sha256=sha256(tmp_path / 'hoda/Data_hoda_full.mat')))
    monkeypatch.setitem(D.HODA_FILES, 'remaining', D.RawFile('RemainingSamples.cdb', md5=md5(tmp_path / 'hoda/RemainingSamples.cdb')))
    tr, rem = D.load_hoda('train', root=tmp_path), D.load_hoda('remaining', root=tmp_path)
    assert tr.images.shape == (5, 1, 28, 28) and tr.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(tr.images, rem.images)
    big = tr.images[4, 0].numpy()                                          # 40x30 -> 20x15
    r, c = np.nonzero(big); assert (np.ptp(r) + 1, np.ptp(c) + 1) == (20, 15)
    with pytest.raises(D.MissingDataError, match='Test 20000.cdb'):
        D.load_hoda('test', root=tmp_path, download=False)


# ---------------------------------------------------------------- SVHN

def test_svhn_layout_and_labels(tmp_path, monkeypatch):
    x = np.random.default_rng(2).integers(0, 256, (32, 32, 3, 5)).astype(np.uint8)
    (tmp_path / 'SVHN').mkdir()
    scipy.io.savemat(tmp_path / 'SVHN/train_32x32.mat', {'X': x, 'y': np.array([[10], [1], [5], [9], [10]])})
    monkeypatch.setitem(D.SVHN_FILES, 'train', D.RawFile('train_32x32.mat', md5=md5(tmp_path / 'SVHN/train_32x32.mat')))
    s = D.load_svhn('train', root=tmp_path)
    assert s.labels.tolist() == [0, 1, 5, 9, 0] and s.images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(s.images[3].permute(1, 2, 0).numpy(), x[..., 3])
    with pytest.raises(D.MissingDataError, match='test_32x32.mat'):
        D.load_svhn('test', root=tmp_path, download=False)


# ---------------------------------------------------------------- CelebA

def celeba_layout(folder, zipped):
    folder.mkdir(parents=True)
    names = [f'{i:06d}.jpg' for i in range(1, 6)]
    blobs = {}
    for i, n in enumerate(names):
        im = np.zeros((218, 178, 3), np.uint8)
        im[35:183, 15:163] = [200, 100, 50][i % 3]      # the central 148 x 148 square is bright, the border dark
        p = folder / 'x.jpg'; Image.fromarray(im).save(p, quality=98); blobs[n] = p.read_bytes(); p.unlink()
    if zipped:
        with zipfile.ZipFile(folder / 'img_align_celeba.zip', 'w') as z:
            for n, b in blobs.items(): z.writestr('img_align_celeba/' + n, b)
    else:
        (folder / 'img_align_celeba').mkdir()
        for n, b in blobs.items(): (folder / 'img_align_celeba' / n).write_bytes(b)
    attrs = np.array([[1, -1], [-1, -1], [1, 1], [-1, 1], [1, -1]])
    (folder / 'list_attr_celeba.txt').write_text('5\nSmiling Male\n' + ''.join(f'{n}  {a} {b}\n' for n, (a, b) in zip(names, attrs)))
    (folder / 'list_eval_partition.txt').write_text(''.join(f'{n} {s}\n' for n, s in zip(names, [0, 0, 1, 2, 0])))
    return attrs


@pytest.mark.parametrize('zipped', [False, True])
def test_celeba_crop_resize_attrs(tmp_path, monkeypatch, zipped):
    attrs = celeba_layout(tmp_path / 'celeba', zipped)
    monkeypatch.setattr(D, 'CELEBA_FILES', tuple(D.RawFile(f.name, md5=md5(tmp_path / 'celeba' / f.name)) for f in D.CELEBA_FILES))
    monkeypatch.setattr(D, 'CELEBA_ZIP', D.RawFile('img_align_celeba.zip'))
    tr = D.load_celeba('train', root=tmp_path)
    assert tr.images.shape == (3, 3, 64, 64) and tr.images.dtype == torch.uint8
    assert tr.labels.tolist() == ((attrs[[0, 1, 4]] > 0).astype(int)).tolist()
    # the centre crop keeps exactly the bright square: no dark border survives
    for img, v in zip(tr.images, [200, 100, 100]):
        assert abs(img.float().mean().item() - v) < 3 and int(img.min()) > v - 40
    assert D.load_celeba('test', root=tmp_path).extra['files'] == ['000004.jpg']
    assert len(D.load_celeba('all', root=tmp_path)) == 5


def test_celeba_missing(tmp_path):
    with pytest.raises(D.MissingDataError, match='list_attr_celeba.txt'):
        D.load_celeba('train', root=tmp_path, download=False)


# ---------------------------------------------------------------- CUB

def test_cub_vocabulary_and_captions(tmp_path):
    cub = tmp_path / 'cub'
    (cub / 'train').mkdir(parents=True); (cub / 'test').mkdir()
    feats = np.arange(2 * 2048, dtype=np.float32).reshape(2, 2048)
    np.save(cub / 'train/features.npy', feats); np.save(cub / 'test/features.npy', feats[:1])
    np.save(cub / 'train/labels.npy', np.array([3, 8]))
    train_caps = ['the bird is red'] * 3 + ['the bird is small and red .'] + ['a bird']
    train_caps = train_caps + ['the bird']                # 2 images x 3 captions
    (cub / 'text_trainvalclasses.txt').write_text('\n'.join(train_caps) + '\n')   # the reference's file name
    (cub / 'text_test.txt').write_text('the red bird flies\nthe bird ' + 'word ' * 40 + '\na bird\n')
    tr = D.load_cub('train', root=tmp_path)
    # counts: the 5, bird 6, is 4, red 4, small/and/./a 1 -> kept (> 3), in order of first appearance
    assert tr.extra['vocab'] == ['<exc>', '<pad>', '<eos>', 'the', 'bird', 'is', 'red']
    assert len(tr) == 6 and tr.labels.tolist() == [3, 3, 3, 8, 8, 8]
    np.testing.assert_array_equal(tr.features[4].numpy(), feats[1])
    te = D.load_cub('test', root=tmp_path)
    c = te.extra['captions']
    assert c.shape == (3, 32) and c.dtype == torch.int64
    assert c[0, :6].tolist() == [3, 6, 4, 0, 2, 1]        # the red bird <exc> <eos> <pad>
    assert c[1, 30].item() == 0 and c[1, 31].item() == 2  # truncated to 31 tokens + <eos>
    assert te.labels.tolist() == [-1, -1, -1]
    one = D.load_cub('train', root=tmp_path, caption_index=2)
    assert len(one) == 2 and torch.equal(one.extra['captions'], tr.extra['captions'][2::3])
    np.save(cub / 'test/features.npy', np.zeros((2, 2048), np.float32))
    with pytest.raises(ValueError, match='whole number of captions'):
        D.load_cub('test', root=tmp_path)


# ---------------------------------------------------------------- PolyMNIST

def test_polymnist_loader_sorts_numerically(tmp_path):
    digits = [3, 3, 1, 0, 7, 2, 2, 9, 5, 4, 6, 8]            # 12 files: '10.x' < '2.x' as strings
    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, (5, 12, 28, 28, 3)).astype(np.uint8)
    for m in range(5):
        d = tmp_path / 'PolyMNIST/train' / f'm{m}'; d.mkdir(parents=True)
        for i in rng.permutation(12):                         # creation order scrambled too
            Image.fromarray(arrays[m, i]).save(d / f'{i}.{digits[i]}.png')
    mods = D.load_polymnist('train', root=tmp_path)
    assert len(mods) == 5 and all(s.labels.tolist() == digits for s in mods)
    for m in range(5): np.testing.assert_array_equal(mods[m].images.permute(0, 2, 3, 1).numpy(), arrays[m])
    (tmp_path / 'PolyMNIST/train/m3/11.8.png').rename(tmp_path / 'PolyMNIST/train/m3/11.7.png')
    with pytest.raises(ValueError, match='m3 does not align'):
        D.load_polymnist('train', root=tmp_path)
    with pytest.raises(D.MissingDataError, match='m0'):
        D.load_polymnist('test', root=tmp_path)


def test_build_polymnist_rule():
    n, H, W = 30, 60, 50
    g = np.random.default_rng(4)
    digits = torch.from_numpy((g.random((n, 1, 28, 28)) < 0.3).astype(np.uint8) * g.integers(100, 256, (n, 1, 28, 28)).astype(np.uint8))
    labels = torch.from_numpy(g.integers(0, 3, n))
    # backgrounds that encode their own coordinates: channel 0 = row, 1 = column, 2 = modality
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing='ij')
    bgs = [torch.from_numpy(np.stack([rows, cols, np.full_like(rows, 10 * m)]).astype(np.uint8)) for m in range(2)]
    mods = D.build_polymnist(D.ImageSet(digits, labels, 'toy'), bgs, seed=7)
    assert all(s.labels.tolist() == sorted(labels.tolist()) for s in mods)
    ink = (digits[:, 0] > 128).numpy()
    for m, s in enumerate(mods):
        used = []
        for i in range(n):
            img = s.images[i].long().numpy()
            # undo the inversion where channel 2 says so, then read the crop corner from the coordinates
            inv = img[2] != 10 * m
            crop = np.where(inv, 255 - img, img)
            top, left = crop[0, 0, 0], crop[1, 0, 0]
            assert 0 <= top <= H - 29 and 0 <= left <= W - 29
            np.testing.assert_array_equal(crop[0], rows[top:top + 28, left:left + 28])
            np.testing.assert_array_equal(crop[1], cols[top:top + 28, left:left + 28])
            match = [j for j in range(n) if np.array_equal(ink[j], inv)]
            assert match and labels[match[0]] == s.labels[i]
            used.append(match[0])
        assert sorted(used) == list(range(n))                 # a permutation within each class
    assert not torch.equal(mods[0].images[:, 2] == 255, mods[1].images[:, 2] == 245)   # independent permutations per modality
    assert torch.equal(D.build_polymnist(D.ImageSet(digits, labels, 'toy'), bgs, seed=7)[1].images, mods[1].images)


def test_procedural_backgrounds_deterministic():
    a, b = D.procedural_backgrounds(5, 64, seed=1), D.procedural_backgrounds(5, 64, seed=1)
    assert len(a) == 5 and all(x.shape == (3, 64, 64) and x.dtype == torch.uint8 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], D.procedural_backgrounds(5, 64, seed=2)[0])
    assert all(int(x.max()) == 255 and int(x.min()) == 0 for x in a)


# ---------------------------------------------------------------- FSDD

def test_same_size_same_mtime_corruption_is_seen_by_a_new_process(tmp_path, monkeypatch):
    "Issue 10: a raw file corrupted in place (size and mtime kept) must not be served the good file's cache."
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    y = np.arange(5, dtype=np.uint8)
    raw = tmp_path / 'MNIST/raw'
    idx_gz(raw / 'train-images-idx3-ubyte.gz', x); idx_gz(raw / 'train-labels-idx1-ubyte.gz', y)
    lab = raw / 'train-labels-idx1-ubyte.gz'
    monkeypatch.setitem(D.MNIST_FILES, 'train', (D.RawFile('train-images-idx3-ubyte.gz'), D.RawFile('train-labels-idx1-ubyte.gz')))
    assert D.load_mnist('train', root=tmp_path).labels.tolist() == y.tolist()
    good = lab.read_bytes(); st = lab.stat()
    idx_gz(lab, y[::-1])                                                    # same length, other bytes
    assert lab.stat().st_size == st.st_size
    os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns))                      # timestamps restored
    D._hashed_this_process.clear()                                          # as in a new process
    assert D.load_mnist('train', root=tmp_path).labels.tolist() == y[::-1].tolist()   # not the good file's cache
    lab.write_bytes(good); os.utime(lab, ns=(st.st_atime_ns, st.st_mtime_ns))
    D._hashed_this_process.clear()
    monkeypatch.setattr(D, '_decode_idx_pair', lambda *a: pytest.fail('decoded again although the good cache exists'))
    assert D.load_mnist('train', root=tmp_path).labels.tolist() == y.tolist()          # repaired: the good cache again
    # with a published checksum the corruption is an error naming the file
    lab.write_bytes(gzip.compress(b"x" * 20)); D._hashed_this_process.clear()
    monkeypatch.setitem(D.MNIST_FILES, 'train', (D.RawFile('train-images-idx3-ubyte.gz'),
                                                 D.RawFile('train-labels-idx1-ubyte.gz', md5=hashlib.md5(good).hexdigest())))
    with pytest.raises(D.ChecksumError, match='train-labels-idx1-ubyte.gz: md5 mismatch'):
        D.load_mnist('train', root=tmp_path)


def test_verify_rehashes_large_files_too(tmp_path, monkeypatch):
    p = tmp_path / 'big'; p.write_bytes(b'0123')
    monkeypatch.setattr(D, 'VERIFY_BELOW', 2)                               # every file counts as large
    assert D.file_digest(p) == sha256(p)
    st = p.stat(); p.write_bytes(b'9123'); os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    D._hashed_this_process.clear()
    assert D.file_digest(p) == hashlib.sha256(b'0123').hexdigest()          # large: the index is trusted...
    assert D.file_digest(p, verify=True) == sha256(p)                       # ...unless verification is asked for
    monkeypatch.setenv(D.ENV_VERIFY, '1')
    p.write_bytes(b'8123'); os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert D.file_digest(p) == sha256(p)


def test_corrupted_cache_entry_is_rebuilt(tmp_path):
    path = D.cache_path('toy', 'train', {'a': 'sha256:00'}, cache=tmp_path)
    builds = []
    make = lambda: builds.append(1) or {'x': torch.arange(1000, dtype=torch.int64)}
    D.cached(path, make)
    raw = bytearray(path.read_bytes()); pos = raw.find(np.arange(1000, dtype=np.int64).tobytes()[800:808])
    raw[pos] ^= 0x01; path.write_bytes(bytes(raw))                          # one flipped bit inside the tensor
    with pytest.warns(UserWarning, match='content digest mismatch'):
        assert torch.equal(D.cached(path, make)['x'], torch.arange(1000))
    assert len(builds) == 2
    (tmp_path / 'toy' / f'.{path.name}.999999999.abc.tmp').write_bytes(b'half')   # a killed writer's temporary
    D.cached(path, make)
    assert not list((tmp_path / 'toy').glob('*.tmp'))


def write_wavs(folder, items, seconds=0.3):
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(8000 * seconds)) / 8000
    for k, (dig, spk, take) in enumerate(items):
        y = 0.3 * np.sin(2 * np.pi * (150 + 50 * dig + 7 * take) * t) * np.hanning(len(t))
        sf.write(folder / f'{dig}_{spk}_{take}.wav', y[: len(t) - 37 * k].astype(np.float32), 8000, subtype='PCM_16')


def test_fsdd_split_and_mfcc(tmp_path):
    import librosa
    items = [(d, s, t) for d in (0, 4) for s in ('ann', 'bo') for t in (0, 4, 5, 11)]
    write_wavs(tmp_path / 'fsdd/recordings', items)
    tr, te = D.load_fsdd('train', root=tmp_path), D.load_fsdd('test', root=tmp_path)
    assert len(tr) == 8 and len(te) == 8 and tr.features.shape == (8, 13) and tr.features.dtype == torch.float32
    assert set(tr.extra['take'].tolist()) == {5, 11} and set(te.extra['take'].tolist()) == {0, 4}
    assert tr.extra['speakers'] == ['ann', 'bo']
    for i in (0, 5):
        f = tmp_path / 'fsdd/recordings' / tr.extra['files'][i]
        y, sr = sf.read(f, dtype='float32')
        ref = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13, n_fft=200, hop_length=80, n_mels=40).mean(-1)
        np.testing.assert_allclose(tr.features[i].numpy(), ref, rtol=1e-4, atol=1e-3)
        assert tr.labels[i].item() == int(f.name[0])


def test_fsdd_sha256sums_and_missing(tmp_path):
    write_wavs(tmp_path / 'fsdd/recordings', [(1, 'x', 7), (2, 'x', 8)])
    rec = tmp_path / 'fsdd/recordings'
    (tmp_path / 'fsdd/SHA256SUMS').write_text(f"{sha256(rec / '1_x_7.wav')}  recordings/1_x_7.wav\n{'f' * 64}  recordings/2_x_8.wav\n")
    with pytest.raises(D.ChecksumError, match='2_x_8.wav'):
        D.load_fsdd('train', root=tmp_path)
    (tmp_path / 'fsdd/SHA256SUMS').write_text(f"{sha256(rec / '1_x_7.wav')}  recordings/1_x_7.wav\n{'f' * 64}  recordings/3_x_9.wav\n")
    with pytest.raises(D.MissingDataError, match='3_x_9.wav'):
        D.load_fsdd('train', root=tmp_path)
    with pytest.raises(D.MissingDataError, match='recordings'):
        D.load_fsdd('train', root=tmp_path / 'nothing')


def test_mfcc_summary_batches_exactly():
    rng = np.random.default_rng(6)
    clips = [rng.standard_normal(n).astype(np.float32) * a for n, a in [(1148, 1.0), (5000, 1e-3), (2000, 0.2), (3001, 0.5)]]
    one_by_one = np.stack([D.mfcc_summary([c])[0] for c in clips])
    np.testing.assert_allclose(D.mfcc_summary(clips, batch=4), one_by_one, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(D.mfcc_summary(clips, batch=3), one_by_one, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- registry

def test_available_and_registry(tmp_path):
    assert set(D.DATASETS) == set(D.SPLITS)
    assert not D.available('mnist', root=tmp_path)
    idx_gz(tmp_path / 'MNIST/raw/t10k-images-idx3-ubyte.gz', np.zeros((1, 28, 28))); idx_gz(tmp_path / 'MNIST/raw/t10k-labels-idx1-ubyte.gz', [0])
    assert D.available('mnist', root=tmp_path, split='test') and not D.available('mnist', root=tmp_path)
    with pytest.raises(ValueError, match='unknown data set'):
        D.available('nope')


# ---------------------------------------------------------------- real data (MMVAE_NB_DATA)

REAL = os.environ.get('MMVAE_NB_DATA')


def real_root(name, split):
    if not REAL: pytest.skip('MMVAE_NB_DATA is unset (set it to the shared data folder, e.g. ../shared/data, to run real-data tests)')
    if not D.available(name, REAL, split): pytest.skip(f'{name} ({split}) is not under MMVAE_NB_DATA={REAL}')
    return REAL


@pytest.mark.realdata
def test_real_mnist_counts():
    root = real_root('mnist', 'train'); real_root('mnist', 'test')
    tr, te = D.load_mnist('train', root, download=False), D.load_mnist('test', root, download=False)
    assert torch.bincount(tr.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(te.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert tr.images.shape == (60000, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert 30 < tr.images.float().mean().item() < 36            # MNIST's mean intensity is 33.3


@pytest.mark.realdata
def test_real_hoda_counts():
    root = real_root('hoda', 'train'); real_root('hoda', 'test')
    tr, te = D.load_hoda('train', root, download=False), D.load_hoda('test', root, download=False)
    assert len(tr) == 60000 and torch.bincount(tr.labels).tolist() == [6000] * 10
    assert len(te) == 20000 and torch.bincount(te.labels).tolist() == [2000] * 10
    assert tr.images.shape[1:] == (1, 28, 28)
    border = torch.cat([tr.images[:, 0, :3].flatten(1), tr.images[:, 0, -3:].flatten(1)], 1)
    assert int(border.max()) == 0                                 # the 20-px box leaves a 4-px margin


@pytest.mark.realdata
def test_real_kannada():
    root = real_root('kannada', 'test')
    te = D.load_kannada('test', root, download=False)
    assert len(te) == 10000 and torch.bincount(te.labels).tolist() == [1000] * 10
    if D.available('kannada', root, 'dig'):
        assert torch.bincount(D.load_kannada('dig', root, download=False).labels).tolist() == [1024] * 10
    if not D.available('kannada', root, 'train'):
        with pytest.raises(D.MissingDataError, match='X_kannada_MNIST_train-idx3-ubyte.gz'):
            D.load_kannada('train', root, download=False)


@pytest.mark.realdata
def test_real_fsdd():
    root = real_root('fsdd', 'train')
    tr, te = D.load_fsdd('train', root), D.load_fsdd('test', root)
    assert len(tr) == 2700 and len(te) == 300
    assert torch.bincount(tr.labels).tolist() == [270] * 10 and torch.bincount(te.labels).tolist() == [30] * 10
    assert len(tr.extra['speakers']) == 6 and bool(torch.isfinite(tr.features).all())
    # the MFCC summary carries digit information: nearest class mean beats chance by far
    mu = torch.stack([tr.features[tr.labels == c].mean(0) for c in range(10)])
    sd = tr.features.std(0)
    acc = (torch.cdist(te.features / sd, mu / sd).argmin(1) == te.labels).float().mean().item()
    assert acc > 0.3


@pytest.mark.realdata
def test_real_fashion_mnist():
    if not REAL: pytest.skip('MMVAE_NB_DATA is unset')
    if not D.available('fashion_mnist', REAL, 'test'): pytest.skip('Fashion-MNIST is neither under MMVAE_NB_DATA nor in /usr/share/datasets/fashion-mnist')
    te = D.load_fashion_mnist('test', REAL, download=False)
    assert torch.bincount(te.labels).tolist() == [1000] * 10


def test_read_only_root_is_never_written_even_by_root(tmp_path):
    from mmvae_nb.data import ensure_files, RawFile, MissingDataError
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o555)           # like ../shared/data: r-x for everyone
    try:
        with pytest.raises(MissingDataError, match='read-only'):
            ensure_files('SVHN', [RawFile('test_32x32.mat', url='https://example.org/test_32x32.mat')], ro, cache=tmp_path / 'c')
        assert list(ro.iterdir()) == []                          # no folder, no partial file
    finally: ro.chmod(0o755)
