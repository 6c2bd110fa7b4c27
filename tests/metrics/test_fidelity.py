"""Tests for fcdm.metrics: the digits classifier, its torch-fidelity extractor, and compute_metrics."""

import math
import time

import numpy as np
import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
import torch_fidelity.metric_fid as tf_fid
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from fcdm.data.digits import digits_arrays
from fcdm.metrics import (
    MetricsError,
    compute_metrics,
    fidelity,
    inception_weights_path,
    load_digits_classifier,
    protocol,
)
from fcdm.metrics import digits_classifier as dc

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: a 60k-parameter CNN runs fastest on one thread


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One store cache per module: the classifier trains once (a few seconds) and is reused."""
    return tmp_path_factory.mktemp("store") / "cache"


@pytest.fixture(scope="module")
def classifier(cache_dir):
    return load_digits_classifier(cache_dir)


def test_classifier_accuracy_and_cache(cache_dir, classifier, monkeypatch):
    path = cache_dir / dc.WEIGHTS_FILE
    assert path.is_file() and not classifier.training
    images, labels = digits_arrays("test", 8)
    predicted = dc.classify(images, classifier)
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.4f}"
    assert classifier.meta["test_accuracy"] == pytest.approx(accuracy)

    # The second load must come from the file: training is made to fail, the file must not be rewritten.
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(dc, "_train", lambda *a, **k: pytest.fail("retrained although the cache file exists"))
    again = load_digits_classifier(cache_dir)
    assert path.stat().st_mtime_ns == mtime
    assert np.array_equal(dc.classify(images, again), predicted)
    # 16x16 (nearest-upsampled) digits are area-resized back to the exact 8x8 images.
    big, _ = digits_arrays("test", 16)
    assert np.array_equal(dc.classify(big, again), predicted)


def test_training_is_deterministic(classifier):
    model, meta = dc._train()
    for name, tensor in classifier.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    assert meta["train_fingerprint"] == classifier.meta["train_fingerprint"]


def test_feature_extractor_contract(cache_dir, classifier):
    cls = FEATURE_EXTRACTORS_REGISTRY["digits-classifier"]
    assert cls is dc.DigitsFeatureExtractor
    assert cls.get_provided_features_list() == ("feat", "logits")
    assert [cls.get_default_feature_layer_for_metric(m) for m in ("isc", "fid", "kid", "prc")] == [
        "logits", "feat", "feat", "feat"
    ]
    assert cls.can_be_compiled() is False
    weights = str(cache_dir / dc.WEIGHTS_FILE)
    # torch-fidelity passes every calculate_metrics kwarg through; unknown ones must be accepted.
    fe = cls("digits-classifier", ["logits", "feat"], feature_extractor_weights_path=weights, cuda=False, verbose=False)
    images, _ = digits_arrays("test", 8)
    x1 = torch.from_numpy(images[:16]).permute(0, 3, 1, 2)
    logits, feat = fe(x1)
    assert feat.shape == (16, 64) and logits.shape == (16, 10)
    assert fe.convert_features_tuple_to_dict((logits, feat))["feat"] is feat
    # 3-channel input (what image folders give) yields the same features as the 1-channel original.
    logits3, feat3 = fe(x1.expand(-1, 3, -1, -1).contiguous())
    torch.testing.assert_close(feat3, feat)
    fe(cls.get_dummy_input_for_compile())
    # Features are scaled to unit RMS on the train split, so KID's cubic kernel stays well conditioned.
    rms = float(feat.pow(2).mean().sqrt())
    assert 0.3 < rms < 3.0, rms


def test_fid_real_halves_far_below_noise(cache_dir, classifier):
    images, _ = digits_arrays("all", 8)
    perm = np.random.default_rng(0).permutation(len(images))
    half_a, half_b = images[perm[: len(images) // 2]], images[perm[len(images) // 2 :]]
    noise = np.random.default_rng(1).integers(0, 256, size=half_a.shape, dtype=np.uint8)
    real = compute_metrics(half_a, reference_images=half_b, cache_dir=cache_dir, metrics=("fid",))["fid"]
    fake = compute_metrics(noise, reference_images=half_b, cache_dir=cache_dir, metrics=("fid",))["fid"]
    assert real < fake / 10, f"FID real halves {real:.4f} vs uniform noise {fake:.4f}"


@pytest.mark.parametrize("size", [8, 16])
def test_fid_of_reference_against_itself_is_zero_and_cached(cache_dir, classifier, size):
    images, _ = digits_arrays("test", size)
    first = compute_metrics(images, reference="digits-test", cache_dir=cache_dir, metrics=("fid",))
    assert abs(first["fid"]) < 1e-6, first
    cached = sorted(p.name for p in (cache_dir / "fidelity").glob(f"digits-test-{size}px-*"))
    assert any(name.endswith("-digits-classifier-stat-fid-feat.pt") for name in cached), cached
    assert compute_metrics(images, reference="digits-test", cache_dir=cache_dir, metrics=("fid",)) == first


def test_class_consistency(cache_dir, classifier):
    images, labels = digits_arrays("test", 8)
    true = compute_metrics(images, labels, cache_dir=cache_dir, metrics=())["class_consistency"]
    shuffled = np.random.default_rng(0).permutation(labels)
    wrong = compute_metrics(images, shuffled, cache_dir=cache_dir, metrics=())["class_consistency"]
    assert true >= 0.95, true
    assert 0.03 < wrong < 0.2, wrong


def test_all_metrics_present_and_finite_for_200_samples(cache_dir, classifier):
    images, labels = digits_arrays("all", 8)
    idx = np.random.default_rng(0).choice(len(images), 200, replace=False)
    out = compute_metrics(images[idx], labels[idx], reference="digits-test", cache_dir=cache_dir)
    for key in ("fid", "is", "is_std", "kid", "kid_std", "precision", "recall", "class_consistency"):
        assert key in out and math.isfinite(out[key]), (key, out)
    assert 0.0 <= out["precision"] <= 1.0 and 0.0 <= out["recall"] <= 1.0
    assert out["is"] > 5.0, out  # ten well-separated classes: IS close to its maximum of 10


def test_npz_and_folder_references(cache_dir, classifier, tmp_path):
    from PIL import Image

    images, _ = digits_arrays("test", 8)
    npz = tmp_path / "ref_batch.npz"
    np.savez(npz, images)  # positional -> arr_0, as in ADM's reference batches
    folder = tmp_path / "ref_png"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0]).save(folder / f"{i:04d}.png")
    for ref in (str(npz), str(folder)):
        out = compute_metrics(images, reference=ref, cache_dir=cache_dir, metrics=("fid",))
        assert abs(out["fid"]) < 1e-6, (ref, out)
    names = [p.name for p in (cache_dir / "fidelity").iterdir()]
    assert any(n.startswith("ref_batch-") for n in names) and any(n.startswith("ref_png-") for n in names)


def test_bad_inputs_raise_metrics_error(cache_dir, classifier):
    images, _ = digits_arrays("test", 8)
    with pytest.raises(MetricsError, match="uint8"):
        compute_metrics(images.astype(np.float32), cache_dir=cache_dir)
    with pytest.raises(MetricsError, match="neither a digits split"):
        compute_metrics(images, reference="no-such-reference.npz", cache_dir=cache_dir)
    with pytest.raises(MetricsError, match="unknown"):
        compute_metrics(images, metrics=("fid", "ppl"), cache_dir=cache_dir)
    with pytest.raises(MetricsError, match="unknown"):
        compute_metrics(images, extractor="vgg16", cache_dir=cache_dir)


def test_inception_without_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(
        tf_inception, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download Inception weights")
    )
    images = np.zeros((4, 8, 8, 1), dtype=np.uint8)
    t0 = time.perf_counter()
    with pytest.raises(MetricsError) as err:
        compute_metrics(images, extractor="inception-v3-compat", cache_dir=tmp_path / "cache")
    assert time.perf_counter() - t0 < 10
    message = str(err.value)
    assert "--fid-weights" in message and fidelity.INCEPTION_WEIGHTS_FILE in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message and tf_inception.URL_INCEPTION_V3 in message
    with pytest.raises(MetricsError, match="--fid-weights"):
        compute_metrics(images, extractor="inception-v3-compat", fid_weights=tmp_path / "missing.pth")


def test_inception_path_with_a_weights_file(tmp_path, monkeypatch):
    """The paper-profile path end to end, with random Inception weights standing in for the real file."""
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    torch.manual_seed(0)
    random_net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    monkeypatch.undo()
    # He init keeps activations O(1): the default init shrinks them to ~1e-8 (slow denormal arithmetic).
    for module in random_net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(random_net.state_dict(), checkpoints / fidelity.INCEPTION_WEIGHTS_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert inception_weights_path() == checkpoints / fidelity.INCEPTION_WEIGHTS_FILE

    images, _ = digits_arrays("test", 8)
    # Three images each (Inception-v3 runs at 299 px), on one thread: two OpenMP threads on a busy
    # two-core machine were measured 20x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = compute_metrics(
            images[:3], reference_images=images[3:6], extractor="inception-v3-compat",
            cache_dir=tmp_path / "cache", metrics=("kid", "is"),  # FID's 2048x2048 eigvals alone take ~5-25 s here
        )
    finally:
        torch.set_num_threads(threads)
    assert set(out) == {"kid", "kid_std", "is", "is_std"} and all(math.isfinite(v) for v in out.values()), out


def test_protocol_tags_are_strings():
    tags = protocol("digits-classifier", "digits-test", 1000)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert tags["eval.description"].startswith("FID-1K") and tags["eval.kid_subset_size"] == "1000"
    assert tags["eval.fid_reference"] == "images"
    assert protocol("inception-v3-compat", "ref.npz", 50_000, 10_000)["eval.kid_subset_size"] == "1000"


# ----------------------------------------------------------------------------------------------------
# ADM reference batches: FID against the stored statistics, the images for everything else
# ----------------------------------------------------------------------------------------------------


def _features(images, weights):
    """Digits-classifier features (N, 64) of uint8 (N, H, W, C) images, straight from the extractor."""
    fe = dc.DigitsFeatureExtractor("digits-classifier", ["feat"], feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        return fe(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())[0]


def test_fid_against_an_adm_npz_uses_its_stored_statistics(cache_dir, classifier, tmp_path):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    reference, _ = digits_arrays("test", 8)
    samples = digits_arrays("train", 8)[0][:200]
    own = fid_features_to_statistics(_features(reference, classifier.weights_path))
    # Statistics of "the whole training set" that differ from the 360 images' own: mean shifted, spread scaled.
    mu, sigma = own["mu"].astype(np.float64) + 0.5, own["sigma"] * 1.5
    npz = tmp_path / "VIRTUAL_digits_labeled.npz"
    np.savez(npz, arr_0=reference, mu=mu, sigma=sigma)
    assert fidelity.fid_reference_kind(str(npz)) == "stored-statistics"

    stored = compute_metrics(samples, reference=str(npz), cache_dir=cache_dir, metrics=("fid", "prc", "kid"))
    by_images = compute_metrics(samples, reference_images=reference, cache_dir=cache_dir,
                                metrics=("fid", "prc", "kid"))
    stats = fid_features_to_statistics(_features(samples, classifier.weights_path))
    expected = fid_statistics_to_metric({k: v.astype(np.float64) for k, v in stats.items()},
                                        {"mu": mu, "sigma": sigma}, verbose=False)[tf_fid.KEY_METRIC_FID]
    assert stored["fid"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert abs(stored["fid"] - by_images["fid"]) > 0.1, (stored, by_images)
    for key in ("precision", "recall", "kid"):  # the images, not the statistics, serve these
        assert stored[key] == by_images[key], key

    # FID alone needs no images at all: a file with only the statistics is a complete FID reference.
    stats_only = tmp_path / "stats_only.npz"
    np.savez(stats_only, mu=mu, sigma=sigma)
    assert compute_metrics(samples, reference=str(stats_only), cache_dir=cache_dir, metrics=("fid",))["fid"] \
        == pytest.approx(stored["fid"], rel=1e-12)
    # Without stored statistics the same file measures FID on its images.
    images_only = tmp_path / "images_only.npz"
    np.savez(images_only, arr_0=reference)
    assert fidelity.fid_reference_kind(str(images_only)) == "images"
    assert compute_metrics(samples, reference=str(images_only), cache_dir=cache_dir, metrics=("fid",))["fid"] \
        == pytest.approx(by_images["fid"], rel=1e-6)


def test_stored_statistics_of_another_extractor_are_refused(cache_dir, classifier, tmp_path):
    samples, _ = digits_arrays("test", 8)
    npz = tmp_path / "inception_stats.npz"
    np.savez(npz, arr_0=samples, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(MetricsError, match=r"dimension 2048.*64-d features.*inception-v3-compat"):
        compute_metrics(samples, reference=str(npz), cache_dir=cache_dir, metrics=("fid",))
    bad = tmp_path / "bad_stats.npz"
    np.savez(bad, arr_0=samples, mu=np.zeros(64), sigma=np.zeros((64, 3)))
    with pytest.raises(MetricsError, match=r"bad_stats.npz: 'mu' \(64,\) and 'sigma' \(64, 3\) are not FID statistics"):
        compute_metrics(samples, reference=str(bad), cache_dir=cache_dir, metrics=("fid",))


def test_metrics_equal_torch_fidelitys_own_calculate_metrics(cache_dir, classifier):
    """compute_metrics takes calculate_metrics apart (to swap in stored statistics); the parts must add
    up to the library's own numbers."""
    images, labels = digits_arrays("all", 8)
    samples = images[np.random.default_rng(0).choice(len(images), 120, replace=False)]
    reference, _ = digits_arrays("test", 8)
    ours = compute_metrics(samples, reference_images=reference, cache_dir=cache_dir)
    theirs = torch_fidelity.calculate_metrics(
        input1=fidelity.ImageArrayDataset(samples), input2=fidelity.ImageArrayDataset(reference),
        feature_extractor="digits-classifier", feature_extractor_weights_path=str(classifier.weights_path),
        isc=True, fid=True, kid=True, prc=True, isc_splits=10, prc_neighborhood=3, kid_subset_size=120,
        cuda=False, save_cpu_ram=True, verbose=False)
    for ours_key, their_key in (("fid", tf_fid.KEY_METRIC_FID), ("is", "inception_score_mean"),
                                ("kid", "kernel_inception_distance_mean"), ("precision", "precision"),
                                ("recall", "recall")):
        assert ours[ours_key] == pytest.approx(theirs[their_key], rel=1e-9, abs=1e-12), ours_key


def test_digits_weights_file_is_checked_and_digested_by_its_tensors(cache_dir, classifier, tmp_path):
    images, labels = digits_arrays("test", 8)
    with pytest.raises(MetricsError, match=r"--fid-weights .*missing.pt: no such file"):
        compute_metrics(images, labels, cache_dir=cache_dir, fid_weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsError, match="not a digits-classifier weights file"):
        compute_metrics(images, labels, cache_dir=cache_dir, fid_weights=junk)
    empty = tmp_path / "empty.pt"  # issue 16 item 10: a zero-byte file's error has no message
    empty.write_bytes(b"")
    with pytest.raises(MetricsError, match=r"--fid-weights .*empty.pt: not a digits-classifier weights file \(EOFError\)"):
        compute_metrics(images, labels, cache_dir=cache_dir, fid_weights=empty)

    ckpt = torch.load(classifier.weights_path, weights_only=True)
    same = tmp_path / "same.pt"
    torch.save({"state_dict": ckpt["state_dict"], "meta": {**ckpt["meta"], "train_seconds": 123.0}}, same)
    changed = tmp_path / "changed.pt"
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    state["body.9.weight"] += 0.05 * torch.randn(state["body.9.weight"].shape, generator=torch.Generator().manual_seed(0))
    torch.save({"state_dict": state, "meta": ckpt["meta"]}, changed)
    digest = fidelity.extractor_weights_digest
    assert digest("digits-classifier", same) == digest("digits-classifier", classifier.weights_path)
    assert digest("digits-classifier", changed) != digest("digits-classifier", classifier.weights_path)
    # The weights given are the ones used, for the features (and the reference features cached under
    # them) and for class consistency alike.
    samples, sample_labels = digits_arrays("train", 8)
    default = compute_metrics(samples[:100], sample_labels[:100], cache_dir=cache_dir, metrics=("fid",))
    a = compute_metrics(samples[:100], sample_labels[:100], cache_dir=cache_dir, metrics=("fid",), fid_weights=same)
    b = compute_metrics(samples[:100], sample_labels[:100], cache_dir=cache_dir, metrics=("fid",), fid_weights=changed)
    assert a == default
    assert abs(b["fid"] - a["fid"]) > 1e-3 * a["fid"], (a, b)


def test_classify_trains_the_classifier_on_first_use_from_an_empty_cache(tmp_path):
    """`classify` runs under no_grad; training the classifier on first use must still get gradients."""
    import numpy as np

    from fcdm.metrics.digits_classifier import classify

    labels = classify(np.zeros((3, 8, 8, 1), np.uint8), cache_dir=tmp_path)
    assert labels.shape == (3,) and labels.dtype == np.int64 and ((labels >= 0) & (labels < 10)).all()
    assert list(tmp_path.iterdir()), "the trained classifier is cached"


def test_a_zero_byte_cache_is_rebuilt_atomically(tmp_path, classifier):
    """Issue 16 item 10: an unreadable cached classifier (zero bytes) is a cache miss: retrained and replaced,
    leaving no temporary file; the rebuilt weights equal the first ones (the recipe is deterministic)."""
    path = tmp_path / dc.WEIGHTS_FILE
    path.write_bytes(b"")
    model = load_digits_classifier(tmp_path)
    assert path.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == [dc.WEIGHTS_FILE]
    assert dc.state_digest(path) == dc.state_digest(classifier.weights_path) and not model.training
