"""Backbones, checkpoint loading (MadryLab format), feature extraction and the site encoder."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from models.backbones import (
    BACKBONES,
    Backbone,
    CheckpointError,
    backbone_revision,
    build_backbone,
    checkpoint_sha256,
)
from models.encoder import SiteEncoder
from models.features import FeatureCache, FeatureExtractor, FeatureKey, tensor_sha256
from models.readout import MultiRidgeCV


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _images(gen, n=4, size=32, dtype=torch.float32):
    return torch.rand(n, 3, size, size, generator=gen, dtype=dtype)


def test_registry_and_seeded_small_cnns(gen):
    assert {"resnet50", "small_cnn", "tiny_cnn"} <= set(BACKBONES)
    x = _images(gen)
    for name in ("small_cnn", "tiny_cnn"):
        a, b, c = (build_backbone(name, seed=s) for s in (3, 3, 4))
        assert isinstance(a, Backbone) and not a.training
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        assert not torch.allclose(a(x), c(x))
        assert {"conv1", "conv2", "features", "fc"} <= set(a.layer_names())
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("vgg_nope")


def test_madrylab_checkpoint_loads_with_identical_outputs(tmp_path, gen):
    torch.manual_seed(0)
    src = torchvision.models.resnet50(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial BN statistics so eval-mode outputs depend on buffers too
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    mean = torch.tensor([0.5, 0.4, 0.3]).reshape(3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).reshape(3, 1, 1)
    sd = src.state_dict()
    madry = {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    madry |= {"module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std}
    madry |= {f"module.model.{k}": v for k, v in sd.items()}
    madry |= {f"module.attacker.model.{k}": v for k, v in sd.items()}  # shared storage: saved once
    path = tmp_path / "madry_l2_eps3.pt"
    torch.save({"model": madry, "epoch": 90}, path)

    net = build_backbone("resnet50", path, num_classes=10)
    x = _images(gen, n=2, size=32)
    with torch.no_grad():
        expected = src((x - mean) / std)
        got = net(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(net.normalize.mean, mean)
    assert len(checkpoint_sha256(path)) == 64


def test_plain_and_prefixed_state_dicts_load(tmp_path, gen):
    src = build_backbone("tiny_cnn", seed=5)
    x = _images(gen)
    for i, sd in enumerate(
        [
            src.net.state_dict(),
            {"state_dict": {f"module.{k}": v for k, v in src.net.state_dict().items()}},
            src.state_dict(),  # our own Backbone format (net. + normalize.*)
        ]
    ):
        path = tmp_path / f"ck{i}.pt"
        torch.save(sd, path)
        loaded = build_backbone("tiny_cnn", path, seed=99)
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)
    half = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in src.net.state_dict().items()}, half)
    loaded = build_backbone("tiny_cnn", half)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(loaded(x), src(x), rtol=1e-2, atol=1e-2)


def test_bad_checkpoints_name_file_and_keys(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt"):
        build_backbone("tiny_cnn", missing)

    sd = build_backbone("tiny_cnn").net.state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    partial["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(CheckpointError) as info:
        build_backbone("tiny_cnn", path)
    msg = str(info.value)
    assert "partial.pt" in msg and "fc.weight" in msg and "extra.weight" in msg

    wrong = tmp_path / "wrong_shape.pt"
    torch.save(build_backbone("tiny_cnn", num_classes=7).net.state_dict(), wrong)
    with pytest.raises(
        CheckpointError, match=r"wrong_shape\.pt.*fc\.weight: checkpoint \(7, 8\) vs model \(4, 8\)"
    ):
        build_backbone("tiny_cnn", wrong)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        build_backbone("tiny_cnn", garbage)


@pytest.mark.parametrize("pool", ["avg", "max", "flatten"])
def test_feature_extractor_matches_manual_forward(gen, pool):
    net = build_backbone("tiny_cnn", seed=1)
    x = _images(gen, n=10, size=16)
    ext = FeatureExtractor(net, "conv2", pool)
    feats = ext.extract(x, batch_size=3)
    with torch.no_grad():
        h = net.net.conv2(net.net.conv1(net.normalize(x)))
    manual = {"avg": h.mean((2, 3)), "max": h.amax((2, 3)), "flatten": h.flatten(1)}[pool]
    torch.testing.assert_close(feats, manual)
    assert not feats.requires_grad
    with pytest.raises(KeyError, match="no layer"):
        FeatureExtractor(net, "conv9", pool)


def test_feature_cache_round_trip(tmp_path, gen):
    net = build_backbone("tiny_cnn", seed=2)
    ext = FeatureExtractor(net, "features", "avg")
    key = FeatureKey("tiny_cnn", None, "features", "avg", {"seed": 2})
    cache = FeatureCache(tmp_path / "cache")
    x = _images(gen, n=5, size=16)
    hashes = [tensor_sha256(img) for img in x]
    assert len(set(hashes)) == 5
    first = cache.get_or_compute(key, x, hashes, ext, batch_size=2)
    np.testing.assert_allclose(first, ext.extract(x).numpy(), rtol=1e-5, atol=1e-6)
    assert cache.missing(key, hashes) == []
    other = FeatureKey("tiny_cnn", None, "features", "avg", {"seed": 3})
    assert cache.missing(other, hashes) == list(range(5))
    # A backbone whose output changed under the same name and arguments gets a new revision:
    # its old vectors are not served (revision 1 keeps every existing cache folder's name).
    revised = FeatureKey("tiny_cnn", None, "features", "avg", {"seed": 2}, revision=2)
    assert cache.missing(revised, hashes) == list(range(5))
    legacy = {"backbone": "tiny_cnn", "checkpoint_sha256": None, "layer": "features", "pool": "avg"}
    legacy_payload = json.dumps({**legacy, "backbone_kwargs": {"seed": 2}}, sort_keys=True, default=str)
    assert key.digest() == hashlib.sha256(legacy_payload.encode()).hexdigest()[:32]
    assert backbone_revision("vone_energy") == 2 and backbone_revision("tiny_cnn") == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    # A second call is served from disk: a broken extractor would fail if it were used.
    again = cache.get_or_compute(key, x, hashes, FeatureExtractor(net, "conv1", "flatten"))
    np.testing.assert_array_equal(again, first)


def test_encoder_gradients_match_finite_differences(gen):
    net = build_backbone("tiny_cnn", seed=4).double()
    x_fit = _images(gen, n=40, size=12, dtype=torch.float64)
    feats = FeatureExtractor(net, "conv2", "avg").extract(x_fit).double().numpy()
    responses = feats @ np.random.default_rng(0).normal(size=(feats.shape[1], 3))
    readout = MultiRidgeCV().fit(feats, responses)
    enc = SiteEncoder.from_readout(net, "conv2", "avg", readout, ["a", "b", "c"]).double()
    assert enc.site_ids == ["a", "b", "c"] and enc.site_index("c") == 2
    np.testing.assert_allclose(enc(x_fit).detach().numpy(), readout.predict(feats), rtol=1e-9, atol=1e-9)

    x = _images(gen, n=2, size=12, dtype=torch.float64).requires_grad_(True)
    out = enc(x)
    assert out.shape == (2, 3)
    out[:, 1].sum().backward()
    direction = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (enc(x + h * direction)[:, 1].sum() - enc(x - h * direction)[:, 1].sum()) / (2 * h)
    analytic = (x.grad * direction).sum()
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(lambda z: enc(z), (x.detach()[:1].requires_grad_(True),), fast_mode=True)
    assert all(not p.requires_grad for p in enc.parameters())


def test_checkpoint_sha256_is_content_hash(tmp_path: Path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"abc")
    b.write_bytes(b"abc")
    assert (
        checkpoint_sha256(a)
        == checkpoint_sha256(b)
        == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    )


def test_extract_autocast_and_channels_last_are_close(gen):
    net = build_backbone("small_cnn", seed=0)
    x = _images(gen, n=3, size=64)
    ref = FeatureExtractor(net, "conv3", "avg").extract(x)
    fast = FeatureExtractor(net, "conv3", "avg").extract(x, dtype=torch.bfloat16, channels_last=True)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape == (3, 128)
    torch.testing.assert_close(fast, ref, rtol=0.05, atol=0.05 * float(ref.abs().max()))
