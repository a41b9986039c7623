"""The EfficientNet-Lite family: real ImageNet weights, the shared interface, checkpoints."""

import shutil
import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from skimage import data as skimage_data

from mlworker import taxonomy
from mlworker.device import choose_runtime
from mlworker.model import (
    EFFICIENTNET_LITE_ARCHS,
    NATIVE_INPUT_SIZE,
    CheckpointError,
    build_classifier,
    efficientnet_lite_weights_path,
    fuse_batchnorm,
    input_scaling,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    preset_from_checkpoint,
    save_checkpoint,
)
from mlworker.presets import IMAGENET_MEAN, TFLITE_MEAN, TFLITE_STD, EvalPreset, normalization
from mlworker.score import Scorer
from tests.paths import SHARED_DATA

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CPU = choose_runtime("cpu", "fp32")
EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class indices


def imagenet_classifier(arch):
    """Our backbone with the package's own 1000-way ImageNet head put back on."""
    model = build_classifier(arch, num_classes=1000, weights="imagenet")
    state = torch.load(efficientnet_lite_weights_path(arch), weights_only=True)
    model.fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return model.eval()


@pytest.mark.parametrize("arch", EFFICIENTNET_LITE_ARCHS)
def test_installed_imagenet_weights_recognise_scikit_image_samples(arch):
    """Real pretrained weights, the TF-Lite input scaling and our resize together: a cat
    and a cup of espresso get their ImageNet classes."""
    size = NATIVE_INPUT_SIZE[arch]
    preset = EvalPreset(size, *normalization(input_scaling(arch)))
    model = imagenet_classifier(arch)
    pictures = [skimage_data.chelsea(), skimage_data.coffee()]
    batch = torch.stack([preset(torch.from_numpy(p).permute(2, 0, 1)) for p in pictures])
    with torch.inference_mode():
        probabilities = model(batch).softmax(1)
    top = probabilities.max(1)
    assert top.indices.tolist() == [EGYPTIAN_CAT, ESPRESSO]
    assert top.values.min() > 0.6
    if arch == "efficientnet_lite0":  # about 0.79 and 0.90 with these weights
        assert top.values[0] > 0.7
        assert top.values[1] > 0.8


def test_tflite_scaling_is_minus_127_over_128_on_0_255_pixels():
    pixels = torch.tensor([0, 127, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 3, 2)
    normalised = EvalPreset(2, TFLITE_MEAN, TFLITE_STD).normalize(pixels)
    expected = (pixels.float() - 127) / 128
    torch.testing.assert_close(normalised, expected, rtol=0, atol=1e-6)
    assert input_scaling("efficientnet_lite1") == "tflite"
    assert input_scaling("resnet50") == "imagenet"


@pytest.mark.parametrize("arch", EFFICIENTNET_LITE_ARCHS)
def test_each_lite_variant_trains_its_head_and_last_stage_at_64_px(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=len(taxonomy.CODES))
    assert model.feature_dim == 1280 and model.fc.in_features == 1280
    for p in model.parameters():
        p.requires_grad_(False)
    last_stage = model.last_stage_modules()
    for module in [model.fc, *last_stage]:
        for p in module.parameters():
            p.requires_grad_(True)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    features, logits = model.train().forward_with_features(x)
    assert features.shape == (2, 1280)
    assert logits.shape == (2, 14)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 5])).backward()
    assert all(p.grad is not None for p in model.head_parameters())
    assert all(p.grad is not None for m in last_stage for p in m.parameters())
    assert model.backbone._conv_stem.weight.grad is None  # frozen: before the last stage
    # the last stage starts where the resolution last halves (stride 32, as ResNet's layer4)
    assert max(last_stage[0]._depthwise_conv.stride) == 2
    assert last_stage[-2] is model.backbone._conv_head


def test_resnet_last_stage_is_layer4():
    model = build_classifier("resnet18")
    assert model.last_stage_modules() == [model.backbone.layer4]
    assert model.head_parameters() == list(model.fc.parameters())


def test_folding_batchnorm_keeps_the_function_of_an_efficientnet():
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0").eval()
    for module in model.modules():  # non-trivial statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        fused = fuse_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)


@pytest.fixture
def cells(tmp_path):
    paths = []
    for code in ("NE", "LY", "EO"):
        src = sorted((SHARED_DATA / "pbc" / code).glob("*.jpg"))[0]
        paths.append(shutil.copy(src, tmp_path / f"{code}.jpg"))
    return paths


def test_lite0_checkpoint_round_trip_scores_with_its_own_input_scaling(tmp_path, cells):
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", weights="imagenet").eval()
    checkpoint = make_checkpoint(model, arch="efficientnet_lite0", input_size=64)
    assert checkpoint["mean"] == pytest.approx(TFLITE_MEAN)
    assert checkpoint["std"] == pytest.approx(TFLITE_STD)
    path = save_checkpoint(checkpoint, tmp_path / "lite0.pt")
    loaded = load_checkpoint(path, arch="efficientnet_lite0")
    restored = model_from_checkpoint(loaded)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), restored(x))

    scores = Scorer(path, runtime=CPU).score(cells)
    preset = preset_from_checkpoint(loaded)
    images = torch.stack([preset.resize(torchvision.io.decode_image(str(p))) for p in cells])
    with torch.inference_mode():
        expected = model(preset.normalize(images))
    for score, logits in zip(scores, expected, strict=True):
        assert score.error is None
        assert score.features.shape == (1280,)
        np.testing.assert_allclose(score.logits, logits.numpy(), atol=1e-3)

    # the scaling travels in the checkpoint: the same weights with ImageNet's differ
    imagenet_scaled = make_checkpoint(
        model, arch="efficientnet_lite0", input_size=64, mean=IMAGENET_MEAN, std=(0.229,) * 3
    )
    other = Scorer(imagenet_scaled, runtime=CPU).score(cells)
    assert not np.allclose(other[0].logits, scores[0].logits, atol=1e-2)


def test_a_checkpoint_or_weights_of_the_other_family_are_refused(tmp_path):
    lite = build_classifier("efficientnet_lite0", num_classes=len(taxonomy.CODES))
    lite_path = save_checkpoint(
        make_checkpoint(lite, arch="efficientnet_lite0", input_size=64), tmp_path / "lite.pt"
    )
    family = "EfficientNet-Lite weights cannot initialise a model of the ResNet family"
    with pytest.raises(CheckpointError, match=family):
        load_checkpoint(lite_path, arch="resnet18")
    with pytest.raises(CheckpointError, match=family):
        build_classifier("resnet18", weights=lite_path)
    with pytest.raises(CheckpointError, match=family):
        build_classifier("resnet18", weights=efficientnet_lite_weights_path("efficientnet_lite0"))
    resnet_file = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet_file)
    with pytest.raises(
        CheckpointError, match="ResNet weights cannot initialise a model of the EfficientNet-Lite"
    ):
        build_classifier("efficientnet_lite0", weights=resnet_file)
    relabelled = dict(load_checkpoint(lite_path), arch="resnet18")
    with pytest.raises(CheckpointError, match="do not fit its arch 'resnet18' \\(ResNet\\)"):
        model_from_checkpoint(load_checkpoint(relabelled))
    with pytest.raises(CheckpointError, match="is unknown here"):
        load_checkpoint(dict(load_checkpoint(lite_path), arch="efficientnet_b7"))
    with pytest.raises(CheckpointError, match="given for a model of the EfficientNet-Lite family"):
        make_checkpoint(lite, arch="resnet18")


def test_a_lite_checkpoint_seeds_a_new_head_of_the_same_arch(tmp_path):
    torch.manual_seed(0)
    trained = build_classifier("efficientnet_lite1", num_classes=len(taxonomy.CODES))
    path = save_checkpoint(
        make_checkpoint(trained, arch="efficientnet_lite1", input_size=64), tmp_path / "l1.pt"
    )
    rebuilt = build_classifier("efficientnet_lite1", num_classes=3, weights=path)
    assert torch.equal(rebuilt.backbone._conv_stem.weight, trained.backbone._conv_stem.weight)
    with pytest.raises(CheckpointError, match="does not match 'efficientnet_lite0'"):
        build_classifier("efficientnet_lite0", weights=path)


def test_resnet_imagenet_offline_names_the_family_that_has_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.setattr("torch.hub._get_torch_home", lambda: str(tmp_path / "empty"))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("no network in the tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match="no ImageNet weights for resnet18") as error:
        build_classifier("resnet18", weights="imagenet")
    assert "efficientnet_lite0" in str(error.value)
    assert "resnet18-f37072fd.pth" in str(error.value)
