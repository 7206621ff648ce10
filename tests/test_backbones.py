"""Pretrained backbones: exact torchvision / insightface layouts, reading users' weight files, freezing, ONNX."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kinship.backbones import (
    BACKBONE_IMAGE_SIZE,
    BACKBONES,
    BackboneEncoder,
    IResNet,
    backbone_parameters,
    load_backbone_weights,
    reference_layout,
    set_trunk_trainable,
    split_parameters,
)
from kinship.errors import UserError
from kinship.model import ModelConfig, PairHead

# Known facts of the originals: torchvision's resnet18/50 (keys incl. num_batches_tracked, parameters
# incl. the 1000-class fc) and insightface arcface_torch's iresnet50/100 (checked once against its
# backbones/iresnet.py: same keys in the same order, same shapes, identical outputs).
KNOWN = {
    "resnet18": (122, 11_689_512),
    "resnet50": (320, 25_557_032),
    "iresnet50": (475, 43_590_848),
    "iresnet100": (925, 65_156_160),
}
# How each name's file is written: plain, nested and/or DataParallel-prefixed.
WRAPPING = {
    "resnet18": ("plain", ""),
    "resnet50": ("state_dict", ""),
    "iresnet50": ("model", "module."),
    "iresnet100": ("plain", "module."),
}


def _meta_layout(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return reference_layout(name).state_dict()


def _random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict in the original layout with every tensor random (so a mix-up cannot pass)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, tensor in _meta_layout(name).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=generator)
        else:
            state[key] = torch.rand(tensor.shape, generator=generator) + 0.5  # positive: valid running_var
    return state


def _save(state: dict, path, wrapping: str = "plain", prefix: str = "") -> None:
    state = {prefix + k: v for k, v in state.items()}
    torch.save(state if wrapping == "plain" else {wrapping: state, "epoch": 7}, path)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """One random weight file per backbone, each in its WRAPPING, plus the states written."""
    folder = tmp_path_factory.mktemp("weights")
    files, states = {}, {}
    for seed, name in enumerate(BACKBONES):
        states[name] = _random_state(name, seed)
        files[name] = folder / f"{name}.pth"
        _save(states[name], files[name], *WRAPPING[name])
    return files, states


_ENCODERS: dict[str, BackboneEncoder] = {}


def _encoder(name: str) -> BackboneEncoder:
    """One encoder per name for the error cases (a failed load leaves it untouched)."""
    if name not in _ENCODERS:
        _ENCODERS[name] = BackboneEncoder(name, 16)
    return _ENCODERS[name]


@pytest.mark.parametrize("name", BACKBONES)
def test_reference_layout_matches_the_originals(name):
    state = _meta_layout(name)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in reference_layout(name).parameters())
    assert (len(state), parameters) == KNOWN[name]
    if name.startswith("resnet"):
        assert state["fc.weight"].shape == (1000, 512 if name == "resnet18" else 2048)
        assert state["layer1.0.conv1.weight"].shape == ((64, 64, 3, 3) if name == "resnet18" else (64, 64, 1, 1))
        assert "layer1.0.downsample.0.weight" in state if name == "resnet50" else "layer2.0.downsample.1.running_mean" in state
    else:
        assert state["fc.weight"].shape == (512, 512 * 7 * 7) and state["features.running_var"].shape == (512,)
        assert state["layer1.0.prelu.weight"].shape == (64,) and "layer1.0.downsample.0.weight" in state
        last = {"iresnet50": "layer3.13.bn3.weight", "iresnet100": "layer3.29.bn3.weight"}[name]
        assert last in state and last.replace(".13.", ".14.").replace(".29.", ".30.") not in state


@pytest.mark.parametrize("name", BACKBONES)
def test_weights_load_exactly(name, weight_files):
    files, states = weight_files
    encoder = BackboneEncoder(name, 16)
    project_before = encoder.project.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_backbone_weights(encoder, files[name])
    loaded = encoder.backbone.state_dict()
    expected = {k: v for k, v in states[name].items() if not (name.startswith("resnet") and k.startswith("fc."))}
    assert list(loaded) == list(expected)
    for key, tensor in expected.items():
        assert torch.equal(loaded[key], tensor), key
    assert torch.equal(encoder.project.weight, project_before)
    if isinstance(encoder.backbone, IResNet):
        assert not encoder.backbone.features.weight.requires_grad


def test_old_torchvision_file_without_num_batches_tracked(tmp_path):
    state = {k: v for k, v in _random_state("resnet18", 11).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save(state, path)
    encoder = BackboneEncoder("resnet18", 8)
    load_backbone_weights(encoder, path)
    assert encoder.backbone.layer4[1].bn2.num_batches_tracked == 0
    assert torch.equal(encoder.backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def _calibrate(encoder: BackboneEncoder, images: torch.Tensor) -> None:
    """Give a randomly initialised trunk the BatchNorm statistics of ``images``, as pretrained
    weights would have: in eval mode a fresh iresnet50 otherwise grows activations to ~1e26."""
    norms = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    mode = encoder.training
    encoder.train()
    with torch.no_grad():
        encoder(images)
    for norm in norms:
        norm.momentum = 0.1
    encoder.train(mode)


def test_encoder_contract():
    torch.manual_seed(0)
    x = torch.rand(2, 3, BACKBONE_IMAGE_SIZE, BACKBONE_IMAGE_SIZE) * 2 - 1
    encoder = BackboneEncoder("resnet18", 16)  # iresnet50's output is checked in the slow test
    _calibrate(encoder, x)
    with torch.no_grad():
        embedding = encoder.eval()(x)
    assert embedding.shape == (2, 16)
    assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
    for name in ("resnet18", "iresnet50"):
        assert not any("input_" in key for key in _encoder(name).state_dict())  # fixed by the name, not saved
    # torchvision weights see ImageNet normalisation of [0, 1] RGB; insightface sees the project's range.
    white = torch.ones(1, 3, 1, 1)
    tv, insight = _encoder("resnet18"), _encoder("iresnet50")
    imagenet = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(white * tv.input_scale + tv.input_shift, imagenet.view(1, 3, 1, 1))
    black = -white
    assert torch.allclose(black * tv.input_scale + tv.input_shift, (-torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])).view(1, 3, 1, 1))
    assert torch.equal(white * insight.input_scale + insight.input_shift, white)


def _assert_one_line_error(error, path, capsys, recwarn):
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    out, err = capsys.readouterr()
    assert out == err == "" and len(recwarn) == 0, (out, err, [str(w.message) for w in recwarn])
    return message


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("resnet18", "iresnet50", ["does not fit iresnet50", "missing keys (", "; it looks like resnet18 weights"]),
        ("iresnet50", "iresnet100", ["does not fit iresnet100: 375 missing keys (layer2.4.bn1.weight, ", ", 0 unexpected", "looks like iresnet50"]),
        ("iresnet100", "iresnet50", ["does not fit iresnet50: 0 missing keys, 375 unexpected (layer2.4."]),
        ("resnet50", "resnet18", ["does not fit resnet18", "unexpected (layer1.0.conv3.weight, ", "looks like resnet50"]),
    ],
)
def test_weights_of_another_layout_or_size(source, target, expected, weight_files, capsys, recwarn):
    path = weight_files[0][source]
    with pytest.raises(UserError) as error:
        load_backbone_weights(_encoder(target), path)
    message = _assert_one_line_error(error, path, capsys, recwarn)
    for part in expected:
        assert part in message


def test_size_mismatch_names_the_tensor(tmp_path, capsys, recwarn):
    state = _random_state("resnet18", 5)
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    state["layer4.1.bn2.bias"] = torch.zeros(7)
    path = tmp_path / "narrow.pth"
    torch.save(state, path)
    with pytest.raises(UserError) as error:
        load_backbone_weights(_encoder("resnet18"), path)
    message = _assert_one_line_error(error, path, capsys, recwarn)
    assert "size mismatch at layer1.0.conv1.weight: file [32,64,3,3], model [64,64,3,3] (and 1 more)" in message


def test_half_precision_file_loads_as_float32(tmp_path):
    state = _random_state("resnet18", 12)
    path = tmp_path / "resnet18_fp16.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    encoder = BackboneEncoder("resnet18", 8)
    load_backbone_weights(encoder, path)
    assert encoder.backbone.conv1.weight.dtype == torch.float32
    assert torch.equal(encoder.backbone.conv1.weight, state["conv1.weight"].half().float())


def test_classifier_of_any_size_is_ignored(tmp_path):
    state = _random_state("resnet18", 6)
    state["fc.weight"], state["fc.bias"] = torch.zeros(8631, 512), torch.zeros(8631)  # a VGGFace2-sized classifier
    path = tmp_path / "vggface2_resnet18.pth"
    torch.save({"state_dict": state}, path)
    encoder = BackboneEncoder("resnet18", 8)
    load_backbone_weights(encoder, path)
    assert torch.equal(encoder.backbone.conv1.weight, state["conv1.weight"])


def test_unreadable_weight_files(tmp_path, capsys, recwarn):
    encoder = _encoder("resnet18")
    cases = {}
    (tmp_path / "notes.pth").write_text("these are not weights")
    cases["notes.pth"] = "not a PyTorch weight file"
    torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "optimizer.pth")
    cases["optimizer.pth"] = "without a state_dict"
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not a state_dict
    cases["module.pth"] = "save model.state_dict() instead"
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    cases["list.pth"] = "list, not a state_dict"
    cases["missing.pth"] = "not found"
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(UserError) as error:
            load_backbone_weights(encoder, path)
        message = _assert_one_line_error(error, path, capsys, recwarn)
        assert reason in message, message


def test_unknown_name():
    with pytest.raises(UserError, match="choose one of resnet18, resnet50, iresnet50, iresnet100"):
        BackboneEncoder("vgg16", 8)


def _trunk_state(encoder):
    return {k: v.detach().clone() for k, v in encoder.backbone.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iresnet50"])  # the torchvision layout: tests/test_backbone_training.py, via the CLI
def test_freeze_fine_tune_and_export(name, tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    encoder = BackboneEncoder(name, 16)
    head = PairHead(ModelConfig(embedding_dim=16, head_hidden=8))
    batch = torch.rand(2, 3, BACKBONE_IMAGE_SIZE, BACKBONE_IMAGE_SIZE) * 2 - 1  # one pair: img0, img1
    target = torch.tensor([1.0])
    _calibrate(encoder, batch)  # stands in for pretrained weights

    def step(optimizer):
        embeddings = encoder(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(embeddings[:1], embeddings[1:]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trunk, rest = split_parameters(torch.nn.ModuleList([encoder, head]))
    assert {id(p) for p in trunk} == {id(p) for p in backbone_parameters(encoder)}
    assert len(trunk) + len(rest) + (name == "iresnet50") == len(list(encoder.parameters())) + len(list(head.parameters()))

    # Stage 1: trunk frozen, BatchNorm statistics included, even after train().
    set_trunk_trainable(encoder, False)
    encoder.train(), head.train()
    assert encoder.project.training and not any(m.training for m in encoder.backbone.modules())
    before, project_before = _trunk_state(encoder), encoder.project.weight.detach().clone()
    step(torch.optim.SGD(rest, lr=0.1))
    assert not torch.equal(encoder.project.weight, project_before)
    after = _trunk_state(encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in encoder.backbone.parameters())

    # Stage 2: unfrozen, the trunk at a lower learning rate.
    set_trunk_trainable(encoder, True)
    encoder.train()
    assert all(m.training for m in encoder.backbone.modules())
    step(torch.optim.SGD([{"params": trunk, "lr": 0.01}, {"params": rest, "lr": 0.1}]))
    after = _trunk_state(encoder)
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    assert not torch.equal(before["layer4.1.bn2.running_mean"], after["layer4.1.bn2.running_mean"])
    if name == "iresnet50":
        assert torch.equal(after["features.weight"], torch.ones(512))  # fixed in the original too

    # Export the encoder with a dynamic batch; ONNX Runtime reproduces PyTorch on another batch size.
    encoder.eval()
    path = tmp_path / f"{name}.encoder.onnx"
    example = torch.rand(2, 3, BACKBONE_IMAGE_SIZE, BACKBONE_IMAGE_SIZE) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder, (example,), str(path), input_names=["image"], output_names=["embedding"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=1024)}},
            opset_version=18, external_data=False, dynamo=True, verbose=False,
        )
    assert not path.with_name(path.name + ".data").exists()
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    images = np.random.default_rng(1).uniform(-1, 1, (3, 3, BACKBONE_IMAGE_SIZE, BACKBONE_IMAGE_SIZE)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"image": images})[0]
    with torch.inference_mode():
        expected = encoder(torch.from_numpy(images)).numpy()
    assert actual.shape == (3, 16)
    assert np.allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    assert np.abs(actual - expected).max() < 1e-4
