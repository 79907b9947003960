"""Pretrained backbones load strictly and recognise real photos."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pawlab.data.decode import decode
from pawlab.errors import ModelFileError
from pawlab.models.backbones import BACKBONES, SameConv2d, build_backbone, load_backbone
from tests.conftest import CATS_DOGS, requires_cats_dogs

INSTALLED = [n for n in BACKBONES.names() if BACKBONES.get(n).default_weights is not None]
RESNETS = ["resnet18", "resnet34", "resnet50"]


@requires_cats_dogs
@pytest.mark.parametrize("name", INSTALLED)
def test_backbone_recognises_a_cat(name: str) -> None:
    model, spec = load_backbone(name)
    photos = sorted((CATS_DOGS / "validation" / "cats").glob("*.jpg"))[:4]
    x = np.stack([decode(p.read_bytes(), (spec.size, spec.size)) for p in photos])
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)
    t = (t - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        top5 = model(t).topk(5).indices.tolist()
        features = model.forward_features(t)
    assert features.shape == (4, model.features)
    cat_photos = sum(any(281 <= i <= 285 for i in row) for row in top5)  # ImageNet's cat classes
    assert cat_photos >= 3, top5


def test_wrong_weights_are_refused_with_the_keys(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelFileError, match="missing keys"):
        load_backbone("efficientnet_lite0", bad)
    with pytest.raises(ModelFileError, match="unknown backbone"):
        load_backbone("resnet9000")


def test_frozen_backbone_trains_only_its_head(tmp_path: Path) -> None:
    import io

    from pawlab import checkpoint
    from pawlab.config import RuntimeConfig, TrainConfig
    from pawlab.inference import load_model
    from pawlab.models import transfer_architecture
    from pawlab.training import train
    from tests.conftest import write_tree

    src = write_tree(tmp_path / "src", {"cat": 8, "dog": 8})
    out = tmp_path / "m.safetensors"
    before, _ = load_backbone("efficientnet_lite0")
    train(
        src,
        out,
        transfer_architecture("efficientnet_lite0", size=32),
        TrainConfig(epochs=2),
        workers=1,
        stream=io.StringIO(),
        runtime=RuntimeConfig(progress=False),
    )
    state = checkpoint.load(out).model_state
    for name, tensor in before.state_dict().items():  # weights and batch-norm statistics unchanged
        assert torch.equal(state[f"body.0.net.{name}"], tensor), name
    pred = load_model(out).predict(src / "cat" / "cat.0.jpg")
    assert set(pred.probabilities) == {"cat", "dog"}


# torchvision's ResNet layout, written out from its resnet.py: blocks per layer, a block's convs and
# batch norms, the pooled width, and how many state-dict entries that makes (each BatchNorm2d has 5:
# weight, bias, running_mean, running_var, num_batches_tracked).
TORCHVISION = {
    "resnet18": ((2, 2, 2, 2), 2, 512, 122),
    "resnet34": ((3, 4, 6, 3), 2, 512, 218),
    "resnet50": ((3, 4, 6, 3), 3, 2048, 320),
}
BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(name: str) -> set[str]:
    depths, convs, width, _ = TORCHVISION[name]
    keys = {"conv1.weight", "fc.weight", "fc.bias", *(f"bn1.{e}" for e in BN_ENTRIES)}
    for i, depth in enumerate(depths, 1):
        for j in range(depth):
            block = f"layer{i}.{j}"
            for c in range(1, convs + 1):
                keys |= {f"{block}.conv{c}.weight", *(f"{block}.bn{c}.{e}" for e in BN_ENTRIES)}
            # a projection where the shape changes: stride 2 (layers 2-4), or 64 -> 256 channels (50's layer1)
            if j == 0 and (i > 1 or width == 2048):
                keys |= {f"{block}.downsample.0.weight", *(f"{block}.downsample.1.{e}" for e in BN_ENTRIES)}
    return keys


def random_state(name: str) -> dict[str, torch.Tensor]:
    """Every entry of ``name``'s state dict, buffers included, set to values a fresh build lacks."""
    model, _ = build_backbone(name)
    gen = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 7
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_has_torchvisions_key_layout(name: str) -> None:
    model, spec = build_backbone(name)
    state = model.state_dict()
    assert set(state) == torchvision_keys(name)
    assert len(state) == TORCHVISION[name][3]
    width = TORCHVISION[name][2]
    assert state["fc.weight"].shape == (1000, width)
    assert ("layer1.0.downsample.0.weight" in state) == (name == "resnet50")
    assert "layer2.0.downsample.0.weight" in state
    if name == "resnet50":
        assert "layer4.2.bn3.running_var" in state
        assert state["layer1.0.conv2.weight"].shape == (64, 64, 3, 3)
        assert model.get_submodule("layer2.0.conv2").stride == (2, 2)  # v1.5: stride on the 3x3
        assert model.get_submodule("layer2.0.conv1").stride == (1, 1)
    else:
        assert model.get_submodule("layer2.0.conv1").stride == (2, 2)
    assert model.get_submodule("bn1").eps == 1e-5
    assert (spec.size, spec.mean, spec.std) == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert spec.default_weights is None


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_pools_features(name: str) -> None:
    model, _ = build_backbone(name)
    width = TORCHVISION[name][2]
    assert model.features == width
    with torch.inference_mode():
        x = torch.randn(2, 3, 64, 64)
        assert model.eval().forward_features(x).shape == (2, width)
        assert model(x).shape == (2, 1000)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", RESNETS)
def test_resnet_weights_round_trip(name: str, suffix: str, tmp_path: Path) -> None:
    state = random_state(name)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    model, spec = load_backbone(name, path)
    assert spec is BACKBONES.get(name)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_wrong_keys_are_listed(name: str, tmp_path: Path) -> None:
    state = random_state(name)
    state["head.weight"] = state.pop("fc.weight")
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as err:
        load_backbone(name, path)
    message = str(err.value)
    assert "\n" not in message
    assert "w.pth" in message
    assert "missing keys (1): fc.weight" in message
    assert "unexpected keys (1): head.weight" in message


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_shape_mismatch_is_named(name: str, tmp_path: Path) -> None:
    width = TORCHVISION[name][2]
    state = random_state(name)
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, width), torch.zeros(10)  # a 10-class head
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as err:
        load_backbone(name, path)
    message = str(err.value)
    assert "\n" not in message
    assert "2 shape mismatch" in message
    assert f"fc.weight: file (10, {width}) vs {name} (1000, {width})" in message
    assert f"fc.bias: file (10,) vs {name} (1000,)" in message


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_has_no_installed_weights(name: str) -> None:
    with pytest.raises(ModelFileError, match=f"^{name}: no weights are installed.*--weights FILE$"):
        load_backbone(name)


def test_torchvisions_own_files_load(tmp_path: Path) -> None:
    """Nested in a training checkpoint, and without batch-norm counters (saved before torch 0.4.1)."""
    state = {k: v for k, v in random_state("resnet18").items() if not k.endswith("num_batches_tracked")}
    for key in ("state_dict", "model"):
        path = tmp_path / f"{key}.pt"
        torch.save({key: state, "epoch": 90}, path)
        model, _ = load_backbone("resnet18", path)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        assert int(loaded["bn1.num_batches_tracked"]) == 0


def test_unreadable_weights_name_the_file(tmp_path: Path) -> None:
    cases: dict[str, object] = {
        "list.pth": [torch.zeros(1)],
        "number.pth": {"conv1.weight": 3},
        "module.pth": torch.nn.Linear(2, 2),  # a whole pickled model: refused, never unpickled
    }
    for file, obj in cases.items():
        torch.save(obj, tmp_path / file)
    for file in ("junk.pth", "junk.safetensors", "empty.pt"):
        (tmp_path / file).write_bytes(b"" if file.startswith("empty") else b"not weights at all")
    for file in [*cases, "junk.pth", "junk.safetensors", "empty.pt", "absent.pth"]:
        with pytest.raises(ModelFileError, match=re.escape(str(tmp_path / file))) as err:
            load_backbone("resnet18", tmp_path / file)
        assert "\n" not in str(err.value), file
    with pytest.raises(ModelFileError, match="torch.nn.modules.linear.Linear"):
        load_backbone("resnet18", tmp_path / "module.pth")
    with pytest.raises(ModelFileError, match="unknown backbone"):
        build_backbone("resnet9000")


@pytest.mark.parametrize("name", BACKBONES.names())
def test_stages_hold_every_parameter_but_the_head_once(name: str) -> None:
    model, _ = build_backbone(name)
    stages = model.stages()
    assert 3 <= len(stages) <= 4
    grouped = [id(p) for group in stages for module in group for p in module.parameters()]
    assert all(any(True for m in group for _ in m.parameters()) for group in stages)
    assert len(grouped) == len(set(grouped))
    head = {id(p) for p in model.classifier.parameters()}
    assert set(grouped) == {id(p) for p in model.parameters()} - head
    assert not head & set(grouped)
    first, *_ = model.parameters()  # the stem, on the input side
    assert any(p is first for m in stages[0] for p in m.parameters())


@pytest.mark.parametrize("batch_stats", [False, True])
def test_unfrozen_backbone_keeps_pretrained_batch_norm_statistics_unless_asked(batch_stats: bool) -> None:
    from pawlab.models import build, transfer_architecture

    spec = transfer_architecture("efficientnet_lite0", size=32, frozen=False)
    spec = [{**layer, "batch_stats": batch_stats} if layer["type"] == "backbone" else layer for layer in spec]
    net = build(spec, 2, pretrained=False).train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    weights = [p for p in net.parameters() if p.requires_grad]
    assert len(weights) > 2  # the backbone trains, not only the head
    net(torch.rand(4, 3, 32, 32)).sum().backward()
    assert all(m.training is batch_stats for m in bns)
    changed = [not torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True)]
    assert all(changed) if batch_stats else not any(changed)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_folding_batch_norms_keeps_the_features(name: str) -> None:
    torch.manual_seed(0)
    model, _ = build_backbone(name)
    for m in model.modules():  # statistics and affine parameters far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model.forward_features(x)
        folded = model.fold_batch_norms()
        got = folded.forward_features(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def _tf_same(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's SAME convolution, spelt out: pad (total // 2) before and the rest after."""
    pads = []
    sizes = x.shape[:1:-1]  # (W, H), as F.pad takes them
    for size, k, s, d in zip(
        sizes, conv.kernel_size[::-1], conv.stride[::-1], conv.dilation[::-1], strict=True
    ):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@pytest.mark.parametrize("kernel", [1, 2, 3, 5, (3, 2)])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_matches_tensorflow(kernel: int | tuple[int, int], stride: int, dilation: int) -> None:
    torch.manual_seed(stride * 10 + dilation)
    for h, w in [(7, 7), (8, 8), (9, 12), (14, 15), (224 // 8, 224 // 8)]:
        conv = SameConv2d(4, 4, kernel, stride, dilation=dilation, groups=2).double()
        x = torch.randn(2, 4, h, w, dtype=torch.double)
        got, expected = conv(x), _tf_same(conv, x)
        assert got.shape == expected.shape == (2, 4, math.ceil(h / stride), math.ceil(w / stride))
        assert torch.allclose(got, expected, atol=1e-12)


def test_an_ensemble_feeds_each_backbone_its_own_size_and_concatenates_their_features() -> None:
    from pawlab.models import build, transfer_architecture
    from pawlab.models.layers import BackboneEnsemble

    spec = transfer_architecture("efficientnet_lite0,efficientnet_lite2")
    assert spec[0]["size"] == 260 and spec[1]["name"] == ["efficientnet_lite0", "efficientnet_lite2"]
    net = build(spec, 2, pretrained=False)
    ensemble = net.trunk[0]
    assert isinstance(ensemble, BackboneEnsemble) and net.trunk_length == 1
    assert [m.size for m in ensemble.parts] == [224, 260]
    x = torch.randn(2, 3, 260, 260)
    with torch.inference_mode():
        features = net.forward_features(x)
        lite0 = ensemble.parts[0].member(F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True))
    assert features.shape == (2, 2560)
    assert torch.allclose(features[:, :1280], lite0, atol=1e-5)  # in order: Lite0's first
    assert net.shapes[1] == (2560,) and "name=efficientnet_lite0,efficientnet_lite2" in net.summary()


def test_an_ensemble_refuses_one_weights_file_and_repeated_names() -> None:
    from pawlab.errors import ArchitectureError
    from pawlab.models import build, transfer_architecture

    with pytest.raises(ArchitectureError, match="one backbone, not several"):
        build(transfer_architecture("efficientnet_lite0,efficientnet_lite1", weights="w.pth"), 2)
    with pytest.raises(ArchitectureError, match="several different ones"):
        build(transfer_architecture("efficientnet_lite0,efficientnet_lite0"), 2)


def test_an_ensembles_features_are_cached_one_backbone_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pawlab.inference.features import trunk_features
    from pawlab.models import build, preprocessing_for, transfer_architecture

    monkeypatch.setenv("PAWLAB_CACHE_DIR", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    spec = transfer_architecture("efficientnet_lite0,efficientnet_lite1", size=40)
    net, pre = build(spec, 2), preprocessing_for(spec)
    feats = trunk_features(
        net.trunk, images, pre, torch.device("cpu"), views=("plain", "flip"), progress=False
    )
    assert feats.shape == (3, 2, 2560)
    entries = tmp_path / "cache" / "features"
    assert len(list(entries.glob("*/features.npy"))) == 3  # each backbone (both views), their join
    with torch.inference_mode():
        direct = net.forward_features(pre.inputs(images, torch.device("cpu"), torch.contiguous_format))
    assert np.allclose(feats[:, 0], direct.numpy(), atol=1e-3)  # folded batch-norms: rounding only
    other = transfer_architecture("efficientnet_lite2,efficientnet_lite1", size=40)  # Lite1 at 37 px here
    trunk_features(
        build(other, 2).trunk, images, preprocessing_for(other), torch.device("cpu"), progress=False
    )
    assert len(list(entries.glob("*/features.npy"))) == 6  # and Lite2, Lite1 at 37 px, their join


def test_an_ensemble_member_with_another_normalisation_gets_its_own_inputs() -> None:
    from pawlab.models import build
    from pawlab.models.layers import BackboneEnsemble

    spec = [
        {"type": "input", "size": 40, "channels": 3},
        {"type": "backbone", "name": ["efficientnet_lite0", "resnet18"]},
        {"type": "linear"},
    ]
    ensemble = build(spec, 2, pretrained=False).trunk[0]
    assert isinstance(ensemble, BackboneEnsemble)
    seen: list[torch.Tensor] = []
    ensemble.parts[1].member.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    pixels = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        ensemble((pixels - 0.5) / 0.5)  # the network's input: Lite0's [-1, 1]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(seen[0], (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1), atol=1e-5)


def test_an_ensemble_needs_installed_weights_for_every_backbone() -> None:
    from pawlab.errors import ArchitectureError
    from pawlab.models import transfer_architecture

    with pytest.raises(ArchitectureError, match="resnet18 has no installed weights"):
        transfer_architecture("efficientnet_lite0,resnet18")
