"""Self-supervised pretext tasks over unlabelled fundus images, one module each on a shared base
(``base.PretextModule``): ``rotation`` (RotNet), ``jigsaw`` (tile permutations), ``simclr`` (contrastive),
``mae`` (masked autoencoding, on a ViT backbone).
``conf/pretext/<name>.yaml`` chooses one; the grader reuses only the backbone weights it leaves.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssl_dr.data.transforms import PRETEXT_TRANSFORMS
from ssl_dr.errors import ConfigError, UserError
from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts.base import PretextModule


def build_pretext(cfg: DictConfig, backbone: Backbone) -> PretextModule:
    """``cfg.pretext.module`` on ``backbone``, checked against ``pretext.transform`` (the batches the data
    pipeline will serve). A bad setting ends as the module's own ``ConfigError`` naming the key, not as
    Hydra's wrapped ``InstantiationException``."""
    kind = cfg.pretext.transform
    if kind not in PRETEXT_TRANSFORMS:
        raise ConfigError(f"pretext.transform={kind!r} is not one of {PRETEXT_TRANSFORMS}: 'pretext' serves "
                          "single images (rotation, jigsaw), 'contrastive' two views per image (simclr)")
    try:
        module = instantiate(cfg.pretext.module, backbone=backbone)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
    if module.TRANSFORM != kind:
        raise ConfigError(f"pretext.transform={kind!r} does not fit {type(module).__name__}, which needs "
                          f"pretext.transform={module.TRANSFORM!r}")
    return module
