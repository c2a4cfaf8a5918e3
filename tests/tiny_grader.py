"""One tiny real grader per head and test session, shared by the tests of the inference commands
(``tests/test_predict.py``, ``test_explain.py``, ``test_export.py``), of ``ssl_dr.inference`` (``tests/inference/``)
and of the heads: a 32 px ``experiment=baseline`` run on the tiny synthetic set, its checkpoint, and the training
pipeline's own tensors to compare against (preprocessing cache + ``eval`` transform + the checkpoint's DRClassifier),
so the tests catch any drift between how a model was trained and how it is applied."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ssl_dr.data.cache import build_cache
from ssl_dr.data.datasets import FundusDataset
from ssl_dr.data.records import Record
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.inference import InferenceSpec, load_classifier, read_spec
from ssl_dr.run_contract import CHECKPOINT_SCREENING
from ssl_dr.train import train
from tests.conftest import TINY, compose_cfg


@dataclass(frozen=True)
class TinyRun:
    """A session's tiny baseline run of one head: checkpoint, its input pipeline, model, the synthetic data,
    and the metrics ``train`` returned."""

    ckpt: Path
    data: Path
    spec: InferenceSpec
    model: torch.nn.Module
    metrics: dict[str, Any]

    @property
    def images(self) -> list[Path]:
        return sorted((self.data / "train_images").glob("*.png"))


_SESSION: dict[str, TinyRun] = {}


def tiny_run(tmp_path_factory: pytest.TempPathFactory, head: str = "classification") -> TinyRun:
    """Train ONE tiny model per head and session; the heads, explain and export tests call this too and
    share it."""
    if head not in _SESSION:
        root = tmp_path_factory.mktemp(f"inference-{head}")
        cfg = compose_cfg(root, [*TINY, "experiment=baseline", f"model.head={head}"], run="tiny")
        metrics = train(cfg)
        ckpt = Path(metrics["output_dir"]) / "checkpoints" / "best.ckpt"
        spec = read_spec(ckpt)
        _SESSION[head] = TinyRun(ckpt=ckpt, data=Path(cfg.data.root), spec=spec, model=load_classifier(ckpt, spec),
                                 metrics=metrics)
    return _SESSION[head]


def pipeline_tensors(run: TinyRun, paths: list[Path], cache_dir: Path) -> torch.Tensor:
    """The images exactly as training evaluates them: preprocessing cache + ``eval`` transform."""
    records = [Record(id_code=p.stem, path=p, grade=None) for p in paths]
    spec = run.spec
    cache = build_cache(records, cache_dir, size=spec.image_size, ben_graham=spec.ben_graham, num_workers=0,
                        mask=spec.mask)
    transform = build_transform("eval", spec.image_size, spec.mean, spec.std, AugmentConfig(), seed=0)
    dataset = FundusDataset(records, transform, with_grades=False, cache=cache)
    return torch.stack([dataset[i] for i in range(len(dataset))])


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread while a module's tests run: the 32 px model gains nothing from more, and on a
    shared 2-core machine OpenMP threads waiting for each other made these tests ten times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def with_screening(ckpt: Path, out: Path, screening: dict[str, Any] | None) -> Path:
    """A copy of ``ckpt`` storing ``screening`` as a fine-tune's screening step does (None: without the key, as
    checkpoints written before it)."""
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload.pop(CHECKPOINT_SCREENING, None)
    if screening is not None:
        payload[CHECKPOINT_SCREENING] = screening
    torch.save(payload, out)
    return out


def screening_payload(temperature: float | None = None, threshold: float = float("nan"),
                      target: dict[str, float] | None = None) -> dict[str, Any]:
    """The checkpoint's ``screening`` entry as ``ssl_dr.training.screening`` writes it."""
    return {"temperature": temperature, "referable_threshold": threshold, "referable_target": target}
