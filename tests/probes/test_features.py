"""Frozen backbone features: what the fine-tune's evaluation transform feeds the network, extracted once per key
(a second job runs no forward pass), and a new key for other weights, seed or size."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import torch
from filelock import FileLock

from ssl_dr.data import cache as cache_module
from ssl_dr.data.cache import lock_file, temp_entry
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.models.backbone import Backbone, load_backbone, save_backbone
from ssl_dr.probes import store
from ssl_dr.probes.features import extract_features, feature_description
from ssl_dr.probes.store import META_NAME, FeatureSet, feature_key, stored_features
from ssl_dr.run_contract import move_folder_into_place

MODEL = "resnet10t"


def backbone(seed: int) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(MODEL)


class ForwardCount:
    """Counts the backbone's forward passes (a hook on the real network)."""

    def __init__(self, net: Backbone) -> None:
        self.calls = 0
        net.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_features_are_the_backbone_on_the_eval_transform_in_eval_mode(tiny_cache, tmp_path):
    cache, records = tiny_cache
    net = backbone(0).train()
    got = extract_features(net, cache, tmp_path, batch_size=3)
    assert net.training  # the caller's mode is restored
    mean, std = net.normalization()
    transform = build_transform("eval", cache.size, mean, std, AugmentConfig(), seed=0)
    net.eval()
    with torch.no_grad():
        expected = net(torch.stack([transform(image=cache.image(r.id_code))["image"] for r in records])).numpy()
    assert got.features.dtype == np.float32 and got.features.shape == (len(records), net.num_features)
    np.testing.assert_allclose(got.rows(records), expected, rtol=1e-4, atol=1e-5)
    assert got.ids == cache.ids
    np.testing.assert_array_equal(got.rows(records[::-1]), got.rows(records)[::-1])  # looked up by id
    with pytest.raises(KeyError, match="no features"):
        got.rows(["not-an-image"])
    meta = json.loads((got.path / META_NAME).read_text())
    assert meta["backbone"] == MODEL and meta["images"] == cache.key and meta["image_size"] == cache.size
    assert got.path == tmp_path / "features" / got.key


def test_a_second_extraction_reuses_the_entry_without_a_forward_pass(tiny_cache, tmp_path):
    cache, records = tiny_cache
    first_net = backbone(0)
    first_count = ForwardCount(first_net)
    first = extract_features(first_net, cache, tmp_path, batch_size=4)
    assert first_count.calls == 2  # 8 images, batches of 4
    again_net = backbone(0)  # the same seed: the same weights, built anew as the next job would
    again_count = ForwardCount(again_net)
    again = extract_features(again_net, cache, tmp_path, batch_size=4)
    assert again_count.calls == 0
    assert again.key == first.key
    np.testing.assert_array_equal(again.rows(records), first.rows(records))


def test_the_key_follows_weights_seed_and_size_and_a_random_init_depends_on_its_seed(tiny_cache, tmp_path):
    cache, records = tiny_cache
    seed0, seed1 = extract_features(backbone(0), cache, tmp_path), extract_features(backbone(1), cache, tmp_path)
    assert seed0.key != seed1.key
    assert not np.allclose(seed0.rows(records), seed1.rows(records))
    assert extract_features(backbone(0), cache, tmp_path, image_size=48).key != seed0.key
    # weights are known by their content: seed 1's file loaded into a seed-0 network is seed 1's entry
    save_backbone(backbone(1), tmp_path / "w.pt")
    loaded = backbone(0)
    load_backbone(loaded, tmp_path / "w.pt")
    assert extract_features(loaded, cache, tmp_path).key == seed1.key


def test_a_job_waiting_on_the_lock_reuses_what_the_builder_published(tiny_cache, tmp_path, caplog):
    cache, _ = tiny_cache
    description = feature_description(backbone(0), cache, cache.size)
    key = feature_key(description)
    root = tmp_path / "features"
    root.mkdir()
    waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for another process" in record.getMessage():
                waiting.set()

    handler = Waiting()  # the shared build lock logs under the image cache's module (ssl_dr.data.cache.build_lock)
    logging.getLogger(cache_module.__name__).addHandler(handler)
    computed, result = [], {}
    lock = FileLock(lock_file(root, key))
    lock.acquire()  # the builder holds the entry's lock
    try:
        thread = threading.Thread(target=lambda: result.setdefault(
            "set", stored_features(tmp_path, description, lambda: computed.append(1) or (["x"], np.ones((1, 2))))))
        with caplog.at_level(logging.INFO, logger=cache_module.__name__):
            thread.start()
            assert waiting.wait(60)
            with temp_entry(root, key) as tmp:  # the builder publishes as stored_features does
                store._write(tmp, key, description, ["a", "b"], np.arange(6.0).reshape(2, 3))
                move_folder_into_place(tmp, root / key, lambda: False)
            lock.release()
            thread.join(60)
    finally:
        logging.getLogger(cache_module.__name__).removeHandler(handler)
        if lock.is_locked:
            lock.release()
    assert computed == []
    assert result["set"].ids == ["a", "b"]
    assert not lock_file(root, key).exists()


def test_a_damaged_entry_is_rebuilt(tmp_path):
    description = {"kind": "test"}
    final = tmp_path / "features" / feature_key(description)
    final.mkdir(parents=True)
    (final / "features.npy").write_bytes(b"half a file")
    built = stored_features(tmp_path, description, lambda: (["a", "b"], np.eye(2)))
    assert isinstance(built, FeatureSet) and built.path == final
    np.testing.assert_array_equal(built.rows(["b"]), [[0.0, 1.0]])
