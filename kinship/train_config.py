"""The training configuration, apart from the training code so that orchestration (the parent flow, the
engines host, parameter schemas) can name it without importing torch: about 1.3 s of every flow run's start."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from kinship.augment import AugmentConfig
from kinship.data import SplitConfig

if TYPE_CHECKING:
    from kinship.model import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as ``config.json`` in the run folder.

    The defaults are chosen for the transfer benchmark as a whole (``benchmarks/transfer.py``: the same
    recipe on independent generators, scored on separate test families), never for one renderer: 12
    epochs keep a 400-family set under 10 minutes on 2 slow CPU cores (about 420 training images/s);
    augmentation varies every nuisance a photo collection may have (pose, scale, colour cast, blur,
    noise, occlusion), and a heavier identity loss (1.0) taught invariance to them best (see the README's
    ablations). Width 16 keeps every stage a multiple of 16 channels, the block size of ONNX Runtime's NCHWc
    convolutions (width 24 ran at 61% of the GEMM ceiling, 32 at 94%), and trains 1.9x faster than 24
    for the same validation AUC per epoch on the default synthetic set.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    image_size: int = 64
    width: int = 16
    embedding_dim: int = 128
    pool_grid: int = 1  # encoder's pooled layout: 1 = global average, 2 or 4 = a coarse grid that keeps position
    arch: str = "residual"
    amp: str = "auto"  # auto | off | fp16 | bf16: auto = bf16 where fast (CUDA SM 8.0+, ROCm gfx90a/gfx94x/gfx11xx),
    # fp16 + grad scaler on other GPUs (pre-Ampere, RDNA1/RDNA2), off on a CPU; "on" = the old rule (kinship.train)
    device: str = "auto"  # auto | cpu | cuda (ROCm shows up as cuda too)
    seed: int = 0
    pairs_per_relationship: int = 1  # positives drawn per relationship per epoch
    val_fraction: float = 0.2
    flip: bool = True  # random horizontal flips: faces are near-symmetric
    shift: int = 4  # random translation of training photos, pixels per axis
    jitter: float = 0.1  # random brightness / contrast change of training photos (relative)
    rotate: float = 10.0  # random rotation of training photos, degrees
    zoom: float = 0.1  # random change of scale (relative)
    colour: float = 0.1  # random gain per colour channel (relative): colour casts
    blur: float = 0.3  # share of training photos blurred
    noise: float = 0.05  # largest sensor-noise standard deviation (input units)
    erase: float = 0.25  # share of training photos with a random patch painted over
    contrastive_weight: float = 1.0  # 0 = plain BCE on sampled pairs
    contrastive_temperature: float = 0.1
    identity_weight: float = 1.0  # 0 = no identity classifier (critters val AUC 0.714 vs 0.751 at epoch 6)
    identity_scale: float = 16.0  # logit scale of the cosine softmax
    max_batches_per_epoch: int = 0  # 0 = all; tests shrink the job with it
    backbone: str = ""  # a pretrained trunk (kinship.backbones: resnet18/50, iresnet50/100) instead of our encoder
    backbone_weights: str = ""  # the user's weight file for ``backbone`` (nothing is ever downloaded)
    freeze_epochs: int = 2  # with a backbone: epochs that train only the projection and head
    backbone_lr_scale: float = 0.1  # with a backbone: the trunk's learning rate relative to ``lr`` once unfrozen
    folds: int = 1  # > 1: train one model per group of held-out families and export their mean as one model
    fold: int = -1  # which fold a member run trains (set by the fold runner); -1 = every fold and the ensemble
    nproc: int = 1  # data-parallel processes per node (kinship.distributed: torchrun, DDP; one per GPU)
    nnodes: int = 1  # nodes taking part (more than one needs KINSHIP_RDZV_ENDPOINT)
    init: str = ""  # a model.pt of the same architecture to start from (kinship pretrain's output); "" = scratch
    # "" = the seeded split (val_fraction, seed); else the store's split salt (kinship.family_split): train and
    # validation families by a keyed hash of their ids, held-out families never read. The flows set it.
    split_salt: str = ""

    @property
    def world_size(self) -> int:
        """How many processes train together (the global batch stays ``batch_size``)."""
        return self.nproc * self.nnodes

    def model_config(self) -> ModelConfig:
        from kinship.model import ModelConfig

        return ModelConfig(arch=self.arch, image_size=self.image_size, width=self.width, embedding_dim=self.embedding_dim,
                           backbone=self.backbone, pool_grid=self.pool_grid)

    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(flip=self.flip, shift=self.shift, jitter=self.jitter, rotate=self.rotate, zoom=self.zoom,
                             colour=self.colour, blur=self.blur, noise=self.noise, erase=self.erase)

    def split_config(self) -> SplitConfig:
        return SplitConfig(val_fraction=self.val_fraction, seed=self.seed, folds=self.folds, fold=max(0, self.fold),
                           stable_salt=self.split_salt)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
