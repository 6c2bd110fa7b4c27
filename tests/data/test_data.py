"""fcdm.data: digits smoke set, latent formats, and prepare_latents with a tiny random VAE."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fcdm.data import (
    DataError,
    DigitsDataset,
    LatentArrayDataset,
    LatentFolderDataset,
    build_dataset,
    digits_arrays,
    prepare_latents,
)
from fcdm.data.prepare import center_crop_arr

# --------------------------------------------------------------------------------------------
#                                          digits
# --------------------------------------------------------------------------------------------

def test_digits_are_read_without_importing_sklearn_and_equal_load_digits():
    import subprocess
    import sys

    code = ("import sys; from fcdm.data.digits import _load; images, labels = _load(); "
            "print('sklearn' in sys.modules, images.shape, images.dtype, labels.dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "(1797,", "8,", "8)", "uint8", "int64"]
    from sklearn.datasets import load_digits

    from fcdm.data.digits import _load

    images, labels = _load()
    reference = load_digits()
    assert np.array_equal(images, reference.images.astype(np.uint8)) and np.array_equal(labels, reference.target)



def test_digits_splits_cover_everything_disjointly_and_deterministically():
    train, test, full = (DigitsDataset(s) for s in ("train", "test", "all"))
    assert len(train) + len(test) == len(full) == 1797
    assert 0.19 < len(test) / len(full) < 0.21
    _, ytr = digits_arrays("train")
    xte, yte = digits_arrays("test")
    xall, yall = digits_arrays("all")
    # disjoint: the two splits' images, matched against the full set, never share an index
    from fcdm.data.digits import split_indices
    itr, ite = split_indices("train"), split_indices("test")
    assert not set(itr) & set(ite) and len(set(itr) | set(ite)) == 1797
    assert np.array_equal(xall[ite], xte) and np.array_equal(yall[itr], ytr)
    # stratified: every class appears in both splits in about the same proportion
    assert set(np.unique(yte)) == set(range(10))
    assert np.all(np.abs(np.bincount(yte) / np.bincount(yall) - 0.2) < 0.02)
    assert torch.equal(DigitsDataset("test").images, test.images)


@pytest.mark.parametrize("size", [8, 16])
def test_digits_shapes_range_and_classes(size):
    ds = build_dataset("digits", split="all", image_size=size)
    assert (ds.num_classes, ds.channels, ds.image_size) == (10, 1, size)
    x, y = ds[0]
    assert x.shape == (1, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == ()
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    assert set(ds.labels.tolist()) == set(range(10))
    xb, yb = next(iter(DataLoader(ds, batch_size=5)))
    assert xb.shape == (5, 1, size, size) and yb.shape == (5,) and yb.dtype == torch.int64


def test_digits_upsampling_is_nearest_and_reference_matches_training_tensors():
    small, big = DigitsDataset("test", 8), DigitsDataset("test", 16)
    assert torch.equal(big.images[:, :, ::2, ::2], small.images)
    assert torch.equal(big.images[:, :, 1::2, 1::2], small.images)
    u8, labels = digits_arrays("test", 16)
    assert u8.shape == (len(big), 16, 16, 1) and u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    # the evaluator's quantisation of a perfect sample reproduces the reference exactly
    quantised = ((big.images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(quantised, u8) and np.array_equal(labels, big.labels.numpy())


def test_digits_flips_off_by_default_and_on_with_flag():
    plain = DigitsDataset("train")
    assert all(torch.equal(plain[i][0], plain.images[i]) for i in range(50))
    torch.manual_seed(0)
    flipped = DigitsDataset("train", hflip=True)
    got = [flipped[i][0] for i in range(50)]
    n_flipped = sum(torch.equal(g, plain.images[i].flip(-1)) and not torch.equal(g, plain.images[i])
                    for i, g in enumerate(got))
    assert 10 < n_flipped < 40


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="digits.*latent-folder.*latent-array"):
        build_dataset("cifar")
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("val")
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset("train", image_size=32)


# --------------------------------------------------------------------------------------------
#                                       latent formats
# --------------------------------------------------------------------------------------------


def _write_array(root: Path, n=6, shape=(4, 8, 8), dtype=np.float16, flip_copies=2, num_classes=3):
    root.mkdir(parents=True)
    lat = np.random.default_rng(0).standard_normal((n, *shape)).astype(dtype)
    lab = np.arange(n, dtype=np.int64) % num_classes
    np.save(root / "latents.npy", lat)
    np.save(root / "labels.npy", lab)
    meta = dict(resolution=64, scale_factor=0.18215, vae="x", flip_copies=flip_copies, num_classes=num_classes)
    (root / "meta.json").write_text(json.dumps(meta))
    return lat, lab


def test_latent_array_round_trip(tmp_path):
    lat, lab = _write_array(tmp_path / "arr")
    ds = build_dataset("latent-array", path=tmp_path / "arr")
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (6, 4, 8, 3)
    assert ds.flip_copies == 2 and ds.resolution == 64 and ds.scale_factor == 0.18215
    x, y = ds[3]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), lat[3].astype(np.float32)) and int(y) == lab[3]
    # pickling (spawned DataLoader workers) must not drag the memory map's data along
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._latents is None and torch.equal(clone[3][0], x)
    assert torch.equal(ds.item(3, seed=1)[0], x)  # latents have no random transform


def test_latent_array_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"{missing}.*prepare-latents"):
        LatentArrayDataset(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"{empty}.*latents.npy"):
        LatentArrayDataset(empty)
    _write_array(tmp_path / "bad")
    np.save(tmp_path / "bad" / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError, match="6 rows but labels.npy has 5"):
        LatentArrayDataset(tmp_path / "bad")
    _write_array(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "latents.npy").write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match=f"{tmp_path / 'corrupt' / 'latents.npy'}"):
        LatentArrayDataset(tmp_path / "corrupt")
    _write_array(tmp_path / "zero", n=0)
    with pytest.raises(DataError, match="empty"):
        LatentArrayDataset(tmp_path / "zero")


def _write_release(root: Path, n=5, features="imagenet256_features", labels="imagenet256_labels", copies=1):
    """What star-kwon/FCDM preparation/extract_features.py writes: {rank}-{step}.npy pairs."""
    (root / features).mkdir(parents=True)
    (root / labels).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for step in range(n):
        np.save(root / features / f"0-{step}.npy", rng.standard_normal((copies, 4, 4, 4)).astype(np.float32))
        np.save(root / labels / f"0-{step}.npy", np.array([step * 7 % 1000], dtype=np.int64))


@pytest.mark.parametrize("names", [("imagenet256_features", "imagenet256_labels"), ("features", "labels")])
def test_latent_folder_release_layout(tmp_path, names):
    _write_release(tmp_path, n=12, features=names[0], labels=names[1])
    ds = build_dataset("latent-folder", root=tmp_path)
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (12, 4, 4, 1000)
    assert ds.names[:3] == ["0-0", "0-1", "0-2"] and ds.names[-1] == "0-11"  # natural order
    x, y = ds[11]
    assert x.shape == (4, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y) == 77
    assert np.array_equal(x.numpy(), np.load(tmp_path / names[0] / "0-11.npy")[0])
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 4, 4, 4) and yb.shape == (4,)


def test_latent_folder_with_two_rows_per_file(tmp_path):
    _write_release(tmp_path, n=3, copies=2)
    ds = LatentFolderDataset(tmp_path)
    assert len(ds) == 6
    assert np.array_equal(ds[3][0].numpy(), np.load(tmp_path / "imagenet256_features" / "0-1.npy")[1])
    assert int(ds[3][1]) == int(ds[2][1]) == 7


def test_latent_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}.*imagenet256_features"):
        LatentFolderDataset(tmp_path / "nope")
    (tmp_path / "e" / "imagenet256_features").mkdir(parents=True)
    (tmp_path / "e" / "imagenet256_labels").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'e'}.*no .npy files"):
        LatentFolderDataset(tmp_path / "e")
    _write_release(tmp_path / "m", n=4)
    (tmp_path / "m" / "imagenet256_labels" / "0-2.npy").unlink()
    with pytest.raises(DataError, match=r"4 feature files but 3 label files.*0-2\.npy"):
        LatentFolderDataset(tmp_path / "m")
    _write_release(tmp_path / "c", n=2)
    (tmp_path / "c" / "imagenet256_features" / "0-1.npy").write_bytes(b"\x93NUMPY garbage")
    ds = LatentFolderDataset(tmp_path / "c")
    with pytest.raises(DataError, match="0-1.npy"):
        ds[1]


# --------------------------------------------------------------------------------------------
#                                 prepare_latents (tiny VAE)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=32).eval()
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return vae, path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """5 random RGB PNGs (32x32, so the ADM crop is the identity) in two class folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls, count in (("cat", 3), ("dog", 2)):
        (root / cls).mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def _pixels(image_dir: Path) -> torch.Tensor:
    files = sorted((image_dir / "cat").glob("*.png")) + sorted((image_dir / "dog").glob("*.png"))
    arr = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def test_prepare_latents_writes_flip_copies(tiny_vae, image_dir, tmp_path):
    vae, vae_path = tiny_vae
    out = prepare_latents(image_dir, tmp_path / "out", vae=str(vae_path), resolution=32, batch_size=2,
                          progress=False, posterior="mean")
    assert out == tmp_path / "out" and sorted(p.name for p in out.iterdir()) == ["labels.npy", "latents.npy", "meta.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir left behind
    ds = LatentArrayDataset(out)
    # (8, 16): two encoder blocks, one downsampling -> 32 / 2 = 16 latent cells per side
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (10, 4, 16, 2)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1] * 2 and ds.flip_copies == 2
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog"] and meta["resolution"] == 32 and meta["scale_factor"] == 0.18215

    x = _pixels(image_dir)
    with torch.no_grad():
        plain = vae.encode(x).latent_dist.mean * 0.18215
        flipped = vae.encode(x.flip(-1)).latent_dist.mean * 0.18215
    got = torch.stack([ds[i][0] for i in range(10)])
    torch.testing.assert_close(got[:5], plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[5:], flipped, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[5:], plain.flip(-1), atol=1e-3)  # a VAE is not flip-equivariant


def test_prepare_latents_samples_reproducibly(tiny_vae, image_dir, tmp_path):
    vae, vae_path = tiny_vae
    kw = dict(vae=str(vae_path), resolution=32, batch_size=8, progress=False, flip=False, seed=3)
    a = prepare_latents(image_dir, tmp_path / "a", **kw)
    b = prepare_latents(image_dir, tmp_path / "b", dtype="float16", **kw)
    za, zb = np.load(a / "latents.npy"), np.load(b / "latents.npy")
    assert za.shape == (5, 4, 16, 16) and zb.dtype == np.float16
    np.testing.assert_allclose(zb, za, atol=2e-2)
    # documented: one generator seeded with `seed`, one sample() call per batch
    with torch.no_grad():
        ref = vae.encode(_pixels(image_dir)).latent_dist.sample(torch.Generator().manual_seed(3)) * 0.18215
    np.testing.assert_allclose(za, ref.numpy(), atol=1e-5, rtol=1e-4)
    with pytest.raises(DataError, match="already exists"):
        prepare_latents(image_dir, a, **kw)


def test_prepare_latents_fails_fast_without_a_vae(image_dir, tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match=f"{tmp_path / 'no-vae'}.*huggingface-cli download"):
        prepare_latents(image_dir, tmp_path / "out", vae=str(tmp_path / "no-vae"), progress=False)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


def test_prepare_latents_rejects_a_folder_without_images(tiny_vae, tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'imgs'}.*no images"):
        prepare_latents(tmp_path / "imgs", tmp_path / "out", vae=str(tiny_vae[1]), resolution=32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_center_crop_matches_adm():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 520, 3), dtype=np.uint8))
    out = center_crop_arr(im, 64)  # 300 -> 150 -> 75 by BOX halving, then bicubic to 64 x 111
    assert out.size == (64, 64)
    box = im.resize((260, 150), Image.BOX).resize((130, 75), Image.BOX)
    ref = np.asarray(box.resize((111, 64), Image.BICUBIC))[:, 23:87]
    assert np.array_equal(np.asarray(out), ref)


def test_item_takes_its_flip_from_the_given_seed_not_the_global_rng():
    ds, plain = DigitsDataset("train", hflip=True), DigitsDataset("train")
    before = torch.get_rng_state()
    assert torch.equal(ds.item(3, seed=2)[0], plain.images[3])  # even seed: as is
    assert torch.equal(ds.item(3, seed=7)[0], plain.images[3].flip(-1))  # odd seed: mirrored
    assert torch.equal(plain.item(3, seed=7)[0], plain.images[3])  # hflip off: never
    assert torch.equal(torch.get_rng_state(), before)


def test_importing_fcdm_data_for_its_error_type_is_cheap():
    import subprocess
    import sys

    code = "import sys; from fcdm.data import DataError; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
