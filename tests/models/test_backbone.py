"""Backbone weights round-trip with one call, and a wrong file fails with a clear error."""

import pytest
import torch

from ssl_dr.models.backbone import Backbone, BackboneWeightsError, load_backbone, save_backbone


@pytest.fixture(scope="module")
def small() -> Backbone:
    return Backbone("resnet10t")


def test_densenet121_pooled_features():
    backbone = Backbone("densenet121")
    assert backbone.num_features == 1024
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 1024)


def test_round_trip_restores_weights(small, tmp_path):
    path = tmp_path / "w" / "backbone.pt"
    save_backbone(small, path, meta={"pretext/val_acc": 0.9})
    fresh = Backbone("resnet10t")
    meta = load_backbone(fresh, path)
    assert meta == {"pretext/val_acc": 0.9}
    for a, b in zip(small.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["backbone.pt"]  # no temp file left


def test_other_architecture_is_refused(small, tmp_path):
    path = tmp_path / "backbone.pt"
    save_backbone(small, path)
    with pytest.raises(BackboneWeightsError, match="holds a resnet10t backbone"):
        load_backbone(Backbone("resnet14t"), path)


def test_mismatched_tensors_are_refused_not_partially_loaded(small, tmp_path):
    path = tmp_path / "backbone.pt"
    payload = {"format": "ssl_dr.models.backbone/1", "name": "resnet10t",
               "state_dict": dict(list(small.model.state_dict().items())[:-3]), "meta": {}}
    torch.save(payload, path)
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        load_backbone(Backbone("resnet10t"), path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_foreign_or_missing_file_is_refused(tmp_path, content):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BackboneWeightsError, match=str(path)):
        load_backbone(Backbone("resnet10t"), path)


def test_plain_state_dict_is_refused(small, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(small.model.state_dict(), path)
    with pytest.raises(BackboneWeightsError, match="not an ssl_dr backbone file"):
        load_backbone(Backbone("resnet10t"), path)
