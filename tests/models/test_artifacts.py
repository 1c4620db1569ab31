"""Model artifacts: exact save/load round trip, encoder rebuild, checkpoint hash enforcement."""

import numpy as np
import pytest
import torch

from models.artifacts import ModelArtifact
from models.backbones import CheckpointError, build_backbone, checkpoint_sha256
from models.encoder import SiteEncoder
from models.features import FeatureExtractor
from models.readout import MultiRidgeCV


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def _fitted(gen, backbone, layer="conv2", pool="avg", n_sites=4):
    images = torch.rand(60, 3, 16, 16, generator=gen)
    feats = FeatureExtractor(backbone, layer, pool).extract(images).numpy()
    w = torch.randn(feats.shape[1], n_sites, generator=gen).numpy()
    responses = feats @ w + 0.01 * torch.randn(60, n_sites, generator=gen).numpy()
    return MultiRidgeCV().fit(feats, responses)


def test_round_trip_is_exact_and_encoder_outputs_match(tmp_path, gen):
    backbone = build_backbone("tiny_cnn", seed=3)
    readout = _fitted(gen, backbone)
    site_ids = ["s1", "s2", "s3", "s4"]
    art = ModelArtifact.from_readout(
        readout,
        backbone="tiny_cnn",
        backbone_kwargs={"seed": 3},
        layer="conv2",
        pool="avg",
        site_ids=site_ids,
        metrics={"r_ceiled": np.array([0.5, 0.6, np.nan, 0.9]), "score": 0.6},
        training={"sessions": ["2026-01-01"], "image_sha256": ["ab" * 32]},
    )
    path = art.save(tmp_path / "v1" / "model.npz")
    assert not list(tmp_path.rglob("*.tmp"))
    loaded = ModelArtifact.load(path)
    for name in ("coef", "intercept", "alpha", "x_mean", "x_scale"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(art, name))
        assert getattr(loaded, name).dtype == getattr(art, name).dtype
    np.testing.assert_array_equal(loaded.metrics["r_ceiled"], art.metrics["r_ceiled"])
    assert loaded.metrics["score"] == 0.6
    assert (loaded.site_ids, loaded.training, loaded.backbone_kwargs) == (site_ids, art.training, {"seed": 3})

    x = torch.rand(3, 3, 16, 16, generator=gen)
    direct = SiteEncoder.from_readout(build_backbone("tiny_cnn", seed=3), "conv2", "avg", readout, site_ids)
    rebuilt = loaded.to_encoder()
    assert rebuilt.site_ids == site_ids
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), direct(x), rtol=0, atol=0)
    np.testing.assert_allclose(
        loaded.to_readout().predict(FeatureExtractor(backbone, "conv2", "avg").extract(x).numpy()),
        direct(x).detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )


def test_checkpoint_hash_is_enforced(tmp_path, gen):
    backbone = build_backbone("tiny_cnn", seed=8)
    ck = tmp_path / "weights.pt"
    torch.save(backbone.net.state_dict(), ck)
    readout = _fitted(gen, backbone, layer="features", n_sites=2)
    art = ModelArtifact.from_readout(
        readout,
        backbone="tiny_cnn",
        checkpoint_sha256=checkpoint_sha256(ck),
        layer="features",
        pool="avg",
        site_ids=["a", "b"],
    )
    path = art.save(tmp_path / "m.npz")
    enc = ModelArtifact.load(path).to_encoder(ck)
    x = torch.rand(2, 3, 16, 16, generator=gen)
    with torch.no_grad():
        expected = FeatureExtractor(backbone, "features", "avg")(x) @ torch.as_tensor(
            readout.coef_, dtype=torch.float32
        ) + torch.as_tensor(readout.intercept_, dtype=torch.float32)
        torch.testing.assert_close(enc(x), expected, rtol=1e-5, atol=1e-5)

    with pytest.raises(CheckpointError, match="none given"):
        art.to_encoder()
    other = tmp_path / "other.pt"
    torch.save(build_backbone("tiny_cnn", seed=9).net.state_dict(), other)
    with pytest.raises(CheckpointError, match="other.pt"):
        art.to_encoder(other)
