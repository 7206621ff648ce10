"""The Siamese kinship network: a shared face encoder and a pair head. Pure ``nn.Module``s, no I/O.

``KinshipNet`` runs as one two-input model (``img0``, ``img1`` -> logit) and as its two halves
(``encoder``: image -> L2-normalised embedding; ``head``: two embeddings -> logit), so a test set
can be scored by embedding each unique image once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("residual", "seed")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. ``arch='seed'`` is the original project's 3-layer CNN, kept to compare."""

    arch: str = "residual"
    image_size: int = 64
    width: int = 32  # channels of the first stage; doubled at each of the next stages
    stages: int = 3
    embedding_dim: int = 128
    head_hidden: int = 64
    dropout: float = 0.1
    members: int = 1  # > 1: a fold ensemble of that many networks of this shape (``EnsembleNet``)
    backbone: str = ""  # "" = our residual encoder; else a pretrained trunk of kinship.backbones (112 px)
    pool_grid: int = 1  # the encoder pools its last feature map to a grid x grid layout (1 = global average)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.image_size < 16 or self.image_size % (2 ** (self.stages + 1)):
            raise ValueError(f"image_size {self.image_size} must be >= 16 and divisible by {2 ** (self.stages + 1)}")
        final_map = self.image_size // 2**self.stages
        if self.pool_grid < 1 or final_map % self.pool_grid:
            raise ValueError(f"pool_grid {self.pool_grid} must divide the encoder's last feature map "
                             f"({final_map}x{final_map} at {self.image_size} px)")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
        if self.backbone:
            from kinship.backbones import BACKBONE_IMAGE_SIZE, BACKBONES

            if self.backbone not in BACKBONES:
                raise ValueError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}")
            if self.image_size != BACKBONE_IMAGE_SIZE:
                raise ValueError(f"--backbone {self.backbone} takes {BACKBONE_IMAGE_SIZE} px faces: pass "
                                 f"--image-size {BACKBONE_IMAGE_SIZE} (got {self.image_size})")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut; ``stride`` 2 halves the resolution."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class FaceEncoder(nn.Module):
    """Image ``[B, 3, S, S]`` -> unit-length embedding ``[B, D]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.width
        # A stride-2 stem: the faces are large, centred structures, so full resolution buys little.
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks, channels = [], width
        for stage in range(config.stages):
            out = width * 2**stage
            blocks.append(ResidualBlock(channels, out, stride=1 if stage == 0 else 2))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        # A coarse grid keeps where a trait sits (a blotch on the cheek, a band on the forehead), which a
        # global average throws away; the faces are aligned crops, so position carries meaning.
        self.pool_grid = config.pool_grid
        self.project = nn.Linear(channels * config.pool_grid**2, config.embedding_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(image))
        if self.pool_grid == 1:
            pooled = features.mean(dim=(2, 3))
        else:
            pooled = F.adaptive_avg_pool2d(features, self.pool_grid).flatten(1)
        return F.normalize(self.project(pooled), dim=1)


class PairHead(nn.Module):
    """Two embeddings -> kinship logit, from (x1-x2)^2, x1*x2 and x1^2-x2^2 (the strong Kaggle recipe)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(3 * config.embedding_dim, config.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, 1),
        )

    def forward(self, emb0: torch.Tensor, emb1: torch.Tensor) -> torch.Tensor:
        features = torch.cat(((emb0 - emb1) ** 2, emb0 * emb1, emb0**2 - emb1**2), dim=1)
        return self.mlp(features).squeeze(1)


class KinshipNet(nn.Module):
    """The two-input model: ``(img0, img1) -> logit`` with a shared encoder."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = FaceEncoder(config) if not config.backbone else _backbone_encoder(config)
        self.head = PairHead(config)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        # One encoder pass over both images: half the kernel launches, same weights.
        batch = img0.shape[0]
        embeddings = self.encoder(torch.cat((img0, img1), dim=0))
        return self.head(embeddings[:batch], embeddings[batch:])


class SeedEncoder(nn.Module):
    """The original project's encoder: three conv layers with max-pooling, flattened (no embedding norm)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.flat_dim = 32 * (config.image_size // 8) ** 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image).flatten(1)


class SeedHead(nn.Module):
    """Concatenated conv features of both images into fully connected layers, as in the seed."""

    def __init__(self, config: ModelConfig, flat_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * flat_dim, 256), nn.ReLU(inplace=True), nn.Linear(256, 1))

    def forward(self, emb0: torch.Tensor, emb1: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat((emb0, emb1), dim=1)).squeeze(1)


class SeedNet(KinshipNet):
    """The original project's Siamese CNN, with the same two-input / two-halves interface."""

    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)
        self.config = config
        self.encoder = SeedEncoder(config)
        self.head = SeedHead(config, self.encoder.flat_dim)


class EnsembleEncoder(nn.Module):
    """Every member's embedding of the image, side by side: ``[B, members * D]``."""

    def __init__(self, encoders: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(encoders)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(image) for encoder in self.members], dim=1)


class EnsembleHead(nn.Module):
    """Each member's head on its own slice of the two embeddings; the logit is the members' mean."""

    def __init__(self, heads: list[nn.Module], widths: list[int]):
        super().__init__()
        self.members = nn.ModuleList(heads)
        self.widths = list(widths)

    def forward(self, emb0: torch.Tensor, emb1: torch.Tensor) -> torch.Tensor:
        parts0, parts1 = torch.split(emb0, self.widths, dim=1), torch.split(emb1, self.widths, dim=1)
        return torch.stack([head(a, b) for head, a, b in zip(self.members, parts0, parts1)]).mean(0)


class EnsembleNet(KinshipNet):
    """A fold ensemble as one model: mean of the members' logits, with the same encoder / head split.

    The encoder concatenates the members' embeddings and the head scores each member's slice, so a test
    set is still embedded once per unique image and every export, engine and scorer treats it like any model.
    """

    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)
        self.config = config
        member_config = replace(config, members=1)
        nets = [build_model(member_config) for _ in range(config.members)]
        widths = [_embedding_width(net, member_config) for net in nets]
        self.encoder = EnsembleEncoder([net.encoder for net in nets])
        self.head = EnsembleHead([net.head for net in nets], widths)

    @classmethod
    def of(cls, members: list[KinshipNet]) -> "EnsembleNet":
        """An ensemble holding trained ``members`` (all of one configuration)."""
        ensemble = cls(replace(members[0].config, members=len(members)))
        for index, member in enumerate(members):
            ensemble.encoder.members[index].load_state_dict(member.encoder.state_dict())
            ensemble.head.members[index].load_state_dict(member.head.state_dict())
        return ensemble.eval()


def _backbone_encoder(config: ModelConfig) -> nn.Module:
    from kinship.backbones import BackboneEncoder

    return BackboneEncoder(config.backbone, config.embedding_dim)


def _embedding_width(net: KinshipNet, config: ModelConfig) -> int:
    if isinstance(net.encoder, SeedEncoder):
        return net.encoder.flat_dim
    return config.embedding_dim


def build_model(config: ModelConfig) -> KinshipNet:
    """The network for ``config`` (a fold ensemble when ``config.members > 1``)."""
    if config.members > 1:
        return EnsembleNet(config)
    return SeedNet(config) if config.arch == "seed" else KinshipNet(config)
