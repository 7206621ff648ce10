"""Pretrained face backbones: ResNet trunks that load a user's own weight files.

Why: the small encoder in ``kinship.model`` learns faces from scratch, which is enough for the
synthetic sets but not for real photos. Every strong RFIW (Recognizing Families In the Wild) entry
started from a network pretrained on millions of faces - the winners fine-tuned ArcFace and
VGGFace/VGGFace2 ResNets - and trained only a small pair head (plus, later, the trunk at a low
learning rate) on the kinship pairs.

Where the weights come from: the user's own files. Nothing is downloaded here; the user passes the
path of a file they obtained themselves (and whose licence they accepted; most face-recognition
weights are for non-commercial research only). Two layouts are understood, each re-implemented as a
plain ``nn.Module`` with exactly the original ``state_dict`` keys and shapes (no torchvision, no
insightface install needed):

* ``resnet18``, ``resnet50``: torchvision's ``torchvision.models.resnet18/50`` layout (``conv1``,
  ``bn1``, ``layer1..4`` of ``BasicBlock``/``Bottleneck`` with ``downsample.0/1``, ``fc``), e.g.
  ``torch.save(torchvision.models.resnet50(weights=...).state_dict(), "resnet50.pth")``. The
  classifier ``fc.*`` (any number of classes) is read and ignored. The trunk is fed ImageNet-
  normalised RGB on [0, 1] (mean 0.485/0.456/0.406, std 0.229/0.224/0.225), the torchvision
  convention, and ends with global average pooling (512 or 2048 features). Face weights ported to
  this layout from Caffe (VGGFace2 ResNet-50) load too, but were trained on BGR 0-255 minus a mean:
  they see the wrong input convention here, which fine-tuning only partly absorbs.
* ``iresnet50``, ``iresnet100``: insightface ``recognition/arcface_torch`` ``iresnet50/100``, the
  ``backbone.pth`` (or ``model.pt``) it writes: ``conv1``, ``bn1``, ``prelu``, ``layer1..4`` of
  ``IBasicBlock`` (``bn1, conv1, bn2, prelu, conv2, bn3``, ``downsample.0/1``), ``bn2``, ``fc``
  (512*7*7 -> 512) and ``features`` (``BatchNorm1d(512)`` whose weight stays fixed at 1); layers
  [3, 4, 14, 3] and [3, 13, 30, 3]. Its input is RGB ``(x - 127.5) / 127.5``, which is the project's
  own [-1, 1] range; it needs exactly 112x112 faces (the ``fc`` flattens a 7x7 map). The ``fp16``
  flag of the original (autocast) and its gradient checkpointing change no weights and are left out.

All four take 112 px faces (``BACKBONE_IMAGE_SIZE``). ``BackboneEncoder`` wraps a trunk with the
same contract as ``kinship.model.FaceEncoder``: an image ``[B, 3, 112, 112]`` in the project's
normalisation ((uint8/255 - 0.5)/0.5) -> an L2-normalised embedding ``[B, D]``. The conversion to
the trunk's own input convention is a fixed buffer inside ``forward``, so an exported ONNX file
carries it and callers keep feeding the project's normalisation.

Training recipe (the lead's ``train``): freeze the trunk, train ``project`` and the pair head, then
unfreeze and fine-tune everything with the trunk at a lower learning rate (``split_parameters``).
``set_trunk_trainable(encoder, False)`` also keeps the trunk's BatchNorm layers in eval mode, and
``BackboneEncoder.train()`` honours that, so ``model.train()`` does not put a frozen trunk's BN back
into training mode; calling ``set_trunk_trainable`` again after ``model.train()`` is harmless.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kinship.errors import UserError, first_line

BACKBONES = ("resnet18", "resnet50", "iresnet50", "iresnet100")
BACKBONE_IMAGE_SIZE = 112

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys under which checkpoints commonly nest the weights (arcface_torch's training checkpoints use
# ``state_dict_backbone``).
_NESTED_KEYS = ("state_dict", "model", "state_dict_backbone")
_MAX_LISTED = 3


# --------------------------------------------------------------------------------------------------
# torchvision layout


def _conv3x3(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)


def _conv1x1(channels_in: int, channels_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv3x3-bn-relu-conv3x3-bn + shortcut, relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride sits on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ``ResNet`` layout. ``num_classes=None`` leaves out ``fc``: ``forward`` then
    returns the globally average-pooled features ``[B, 512 * block.expansion]``."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], num_classes: int | None = None):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.out_features = 512 * block.expansion
        self.fc = nn.Linear(self.out_features, num_classes) if num_classes else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.mean(dim=(2, 3))  # torchvision's AdaptiveAvgPool2d((1, 1)) + flatten
        return x if self.fc is None else self.fc(x)


# --------------------------------------------------------------------------------------------------
# insightface arcface_torch layout


class IBasicBlock(nn.Module):
    """insightface's ``IBasicBlock``: bn-conv3x3-bn-prelu-conv3x3(stride)-bn + shortcut, no final activation."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """insightface arcface_torch's ``IResNet``: 112x112 RGB in (x-127.5)/127.5 -> 512-d ``features``."""

    fc_scale = 7 * 7

    def __init__(self, layers: list[int], num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # fixed at 1 in the original, and kept so here
        self.out_features = num_features
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# --------------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True)
class _Spec:
    family: str  # "torchvision" | "insightface"
    layers: tuple[int, int, int, int]
    bottleneck: bool = False


_SPECS = {
    "resnet18": _Spec("torchvision", (2, 2, 2, 2)),
    "resnet50": _Spec("torchvision", (3, 4, 6, 3), bottleneck=True),
    "iresnet50": _Spec("insightface", (3, 4, 14, 3)),
    "iresnet100": _Spec("insightface", (3, 13, 30, 3)),
}
assert tuple(_SPECS) == BACKBONES


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return _SPECS[name]


def build_trunk(name: str) -> nn.Module:
    """The trunk ``BackboneEncoder`` holds: torchvision nets without ``fc``, iresnets whole."""
    spec = _spec(name)
    if spec.family == "torchvision":
        return ResNet(Bottleneck if spec.bottleneck else BasicBlock, list(spec.layers), num_classes=None)
    return IResNet(list(spec.layers))


def reference_layout(name: str) -> nn.Module:
    """The whole network in its original layout (torchvision's with its 1000-class ``fc``): what a
    ``state_dict()`` of the original code holds. For tests and for writing files by hand."""
    spec = _spec(name)
    if spec.family == "torchvision":
        return ResNet(Bottleneck if spec.bottleneck else BasicBlock, list(spec.layers), num_classes=1000)
    return IResNet(list(spec.layers))


def _ignored_keys(name: str) -> tuple[str, ...]:
    """Key prefixes a weight file may carry that the trunk does not use."""
    return ("fc.",) if _spec(name).family == "torchvision" else ()


def _input_affine(name: str) -> tuple[list[float], list[float]]:
    """``scale``, ``shift`` per channel so that ``x * scale + shift`` maps the project's [-1, 1]
    input (x = (p - 0.5) / 0.5 for p in [0, 1]) to the trunk's own convention."""
    if _spec(name).family == "insightface":
        return [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]  # (p*255 - 127.5) / 127.5 is the project's range
    # p = 0.5 x + 0.5, and torchvision wants (p - mean) / std.
    scale = [0.5 / s for s in IMAGENET_STD]
    shift = [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    return scale, shift


# --------------------------------------------------------------------------------------------------
# The encoder


class BackboneEncoder(nn.Module):
    """Image ``[B, 3, 112, 112]`` (project normalisation, [-1, 1]) -> unit-length embedding ``[B, D]``.

    ``backbone``: the pretrained trunk (``build_trunk(name)``), producing 512/2048 (torchvision) or
    512 (iresnet) features; ``project``: ``Linear`` to ``embedding_dim``.
    """

    def __init__(self, name: str, embedding_dim: int):
        super().__init__()
        self.name = name
        self.backbone = build_trunk(name)
        self.project = nn.Linear(self.backbone.out_features, embedding_dim)
        scale, shift = _input_affine(name)
        # Not persistent: fixed by ``name``, so checkpoints carry only weights; ONNX still holds them.
        self.register_buffer("input_scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.trunk_frozen = False

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.backbone(image * self.input_scale + self.input_shift)
        return F.normalize(self.project(features), dim=1)

    def train(self, mode: bool = True) -> BackboneEncoder:
        super().train(mode)
        if self.trunk_frozen:
            self.backbone.eval()  # a frozen trunk keeps its pretrained BatchNorm statistics
        return self


def set_trunk_trainable(encoder: BackboneEncoder, trainable: bool) -> None:
    """Freeze (``False``) or unfreeze the trunk of ``encoder``; ``project`` is untouched.

    Frozen: no gradients for the trunk, and the trunk (its BatchNorm layers above all) stays in eval
    mode, also across ``encoder.train()`` / ``model.train()``. Unfrozen: gradients again and the
    trunk follows the encoder's mode. Call it after ``model.train()`` if in doubt: it is idempotent.
    The iresnet ``features.weight`` stays fixed at 1 either way, as in the original.
    """
    encoder.trunk_frozen = not trainable
    fixed = _fixed_parameters(encoder)
    for parameter in encoder.backbone.parameters():
        parameter.requires_grad = trainable and id(parameter) not in fixed
    encoder.backbone.train(encoder.training and trainable)


def _fixed_parameters(encoder: BackboneEncoder) -> set[int]:
    trunk = encoder.backbone
    return {id(trunk.features.weight)} if isinstance(trunk, IResNet) else set()


def backbone_parameters(encoder: BackboneEncoder) -> list[nn.Parameter]:
    """The trunk's trainable parameters (for the low-learning-rate group when fine-tuning)."""
    fixed = _fixed_parameters(encoder)
    return [p for p in encoder.backbone.parameters() if id(p) not in fixed]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(trunk, rest)`` for every ``BackboneEncoder`` inside ``model``: two optimiser groups.

    ``rest`` holds every other parameter (projection, head) except the fixed ones; requires_grad is
    not consulted, so the groups stay the same when the trunk is frozen or unfrozen.
    """
    trunk, fixed = [], set()
    for module in model.modules():
        if isinstance(module, BackboneEncoder):
            trunk += backbone_parameters(module)
            fixed |= _fixed_parameters(module)
    in_trunk = {id(p) for p in trunk}
    rest = [p for p in model.parameters() if id(p) not in in_trunk and id(p) not in fixed]
    return trunk, rest


# --------------------------------------------------------------------------------------------------
# Reading weight files


def load_backbone_weights(encoder: BackboneEncoder, path: Path) -> None:
    """Load the user's weight file ``path`` into ``encoder.backbone``.

    Accepts a plain ``state_dict`` or a dict holding one under ``state_dict``, ``model`` or
    ``state_dict_backbone``; a ``module.`` prefix (DataParallel) is stripped; torchvision's ``fc.*``
    is ignored; BatchNorm ``num_batches_tracked`` may be absent (old torchvision files). Anything
    else - a missing or unreadable file, another layout, other sizes - is a one-line ``UserError``
    naming the file.
    """
    path = Path(path)
    name = encoder.name
    if not path.is_file():
        raise UserError(f"backbone weights not found: {path}")
    state = _read_state_dict(path)
    expected = encoder.backbone.state_dict()
    ignored = _ignored_keys(name)
    kept = {k: v for k, v in state.items() if not k.startswith(ignored)}
    missing = [k for k in expected if k not in kept and not k.endswith(".num_batches_tracked")]
    # BatchNorm's num_batches_tracked is bookkeeping: neither its absence nor a stray one counts.
    unexpected = [k for k in kept if k not in expected and not k.endswith(".num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit {name}: {len(missing)} missing keys{_listed(missing)}, "
            f"{len(unexpected)} unexpected{_listed(unexpected)}{_looks_like(state, name)}"
        )
    mismatched = [k for k, v in kept.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        first = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UserError(
            f"{path} does not fit {name}: size mismatch at {first}: file {_shape(kept[first])}, "
            f"model {_shape(expected[first])}{more}{_looks_like(state, name)}"
        )
    bad_dtype = [k for k, v in kept.items() if not (v.is_floating_point() or k.endswith(".num_batches_tracked"))]
    if bad_dtype:
        raise UserError(f"{path} does not fit {name}: {bad_dtype[0]} holds {kept[bad_dtype[0]].dtype}, not floats")
    full = {k: kept.get(k, expected[k]) for k in expected}  # fills absent num_batches_tracked
    try:
        encoder.backbone.load_state_dict(full, strict=True)
    except RuntimeError as error:  # pragma: no cover - the checks above should catch everything
        raise UserError(f"{path} does not fit {name}: {first_line(error)}") from error


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would bury the one-line refusal
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors all mean the same here
        text = first_line(error, 80)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds Python objects, not only tensors (save model.state_dict() instead)"
        else:
            reason = f"not a PyTorch weight file ({text})"
        raise UserError(f"cannot read backbone weights {path}: {reason}") from None
    for _ in range(2):
        if isinstance(loaded, Mapping) and not _all_tensors(loaded):
            nested = next((loaded[k] for k in _NESTED_KEYS if isinstance(loaded.get(k), Mapping)), None)
            if nested is not None:
                loaded = nested
    if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
        what = type(loaded).__name__
        if isinstance(loaded, Mapping):
            keys = [str(k) for k in loaded][:_MAX_LISTED]
            what = f"a dict without a state_dict (keys: {', '.join(keys) or 'none'})"
        raise UserError(f"cannot read backbone weights {path}: {what}, not a state_dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in loaded.items()}


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def _listed(keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:_MAX_LISTED])
    return f" ({shown}, ...)" if len(keys) > _MAX_LISTED else f" ({shown})"


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ",".join(str(d) for d in tensor.shape) + "]"


@lru_cache(maxsize=None)
def _signature(name: str) -> frozenset:
    """``(key, shape)`` of a layout's trunk weights, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        state = reference_layout(name).state_dict()
    ignored = _ignored_keys(name)
    return frozenset((k, tuple(v.shape)) for k, v in state.items() if not k.startswith(ignored) and not k.endswith(".num_batches_tracked"))


def _looks_like(state: dict[str, torch.Tensor], name: str) -> str:
    """``"; it looks like resnet50 weights"`` when the file fits another known layout exactly."""
    for other in BACKBONES:
        if other == name:
            continue
        ignored = _ignored_keys(other)
        found = frozenset((k, tuple(v.shape)) for k, v in state.items() if not k.startswith(ignored) and not k.endswith(".num_batches_tracked"))
        if found == _signature(other):
            return f"; it looks like {other} weights"
    return ""
