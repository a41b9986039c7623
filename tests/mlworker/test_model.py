import logging

import pytest
import torch
import torchvision

from mlworker import taxonomy
from mlworker.model import (
    CheckpointError,
    build_classifier,
    fuse_batchnorm,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize(
    ("arch", "num_classes", "feature_dim"),
    [("resnet18", 14, 512), ("resnet18", 5, 512), ("resnet34", 14, 512), ("resnet50", 9, 2048)],
)
def test_builder_gives_the_requested_head_and_pooled_features(arch, num_classes, feature_dim):
    torch.manual_seed(0)
    model = build_classifier(arch, num_classes=num_classes).eval()
    with torch.inference_mode():
        features, logits = model.forward_with_features(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, feature_dim)
    assert logits.shape == (2, num_classes)
    assert model.feature_dim == feature_dim


def test_resnet152_default_has_14_way_head_on_2048_d_features():
    model = build_classifier().eval()
    assert model.num_classes == len(taxonomy.CODES) == 14
    assert model.fc.in_features == 2048
    with torch.inference_mode():
        features, logits = model.forward_with_features(torch.rand(1, 3, 32, 32))
    assert features.shape == (1, 2048)
    assert logits.shape == (1, 14)


def test_builder_rejects_unknown_arch_and_says_random_init(caplog):
    with pytest.raises(ValueError, match="resnet152"):
        build_classifier("vgg16")
    with caplog.at_level(logging.WARNING, logger="mlworker.model"):
        build_classifier("resnet18")
    assert "random initialisation" in caplog.text


def test_builder_loads_a_local_torchvision_state_dict_into_the_backbone(tmp_path):
    torch.manual_seed(1)
    imagenet_like = torchvision.models.resnet18()
    path = tmp_path / "resnet18-local.pth"
    torch.save(imagenet_like.state_dict(), path)
    model = build_classifier("resnet18", weights=path)
    assert torch.equal(model.backbone.conv1.weight, imagenet_like.conv1.weight)
    with pytest.raises(CheckpointError, match="do not fit resnet34"):
        build_classifier("resnet34", weights=path)
    with pytest.raises(FileNotFoundError):
        build_classifier("resnet18", weights=tmp_path / "missing.pth")


def tiny_checkpoint(**kwargs):
    torch.manual_seed(0)
    model = build_classifier("resnet18")
    return model, make_checkpoint(model, arch="resnet18", input_size=32, **kwargs)


def test_checkpoint_round_trip_restores_weights_and_metadata(tmp_path):
    model, checkpoint = tiny_checkpoint(temperature=1.7, args={"lr": 0.01}, metrics={"acc": 0.5})
    path = save_checkpoint(checkpoint, tmp_path / "ckpt.pt")
    # weights_only=True must be able to read it: plain builtins and tensors only
    raw = torch.load(path, weights_only=True)
    assert raw["class_codes"] == list(taxonomy.CODES)
    loaded = load_checkpoint(path, arch="resnet18")
    assert loaded["temperature"] == 1.7
    assert loaded["input_size"] == 32
    assert loaded["args"] == {"lr": 0.01}
    assert loaded["metrics"] == {"acc": 0.5}
    restored = model_from_checkpoint(loaded)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), restored(x))
    # a WBC checkpoint also serves as backbone weights for a new head
    rebuilt = build_classifier("resnet18", num_classes=3, weights=path)
    assert torch.equal(rebuilt.backbone.conv1.weight, model.backbone.conv1.weight)


def test_checkpoint_with_other_classes_or_arch_is_refused(tmp_path):
    _, checkpoint = tiny_checkpoint()
    path = save_checkpoint(checkpoint, tmp_path / "ckpt.pt")
    with pytest.raises(
        CheckpointError, match="arch 'resnet18' does not match expected 'resnet152'"
    ):
        load_checkpoint(path, arch="resnet152")
    reordered = [*taxonomy.CODES[1:], taxonomy.CODES[0]]
    with pytest.raises(CheckpointError, match="classes do not match"):
        load_checkpoint(path, class_codes=reordered)
    with pytest.raises(CheckpointError, match="not a WBC classifier checkpoint"):
        load_checkpoint({"model": {}})
    broken = dict(checkpoint, temperature=0.0)
    with pytest.raises(CheckpointError, match="temperature"):
        load_checkpoint(broken)


def test_make_checkpoint_refuses_a_class_list_that_does_not_fit_the_head():
    model = build_classifier("resnet18", num_classes=5)
    with pytest.raises(CheckpointError, match="14 class codes for a 5-way head"):
        make_checkpoint(model, arch="resnet18")


def test_folding_batchnorm_keeps_the_function_of_the_model():
    torch.manual_seed(0)
    model = build_classifier("resnet18").eval()
    for module in model.modules():  # non-trivial statistics, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        fused = fuse_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batchnorm(build_classifier("resnet18"))
