"""LSE pooling, the LSE classifier, its heatmaps, ImageNet weight loading and resume checkpoints."""

import os
import time
from urllib.error import URLError

import pytest
import torch

from chestzoo.networks import LSEClassifier, LSEPooling, PretrainedWeightsUnavailable, imagenet_weights_file, latest_checkpoint
from chestzoo.visualize import ClassHeatmaps


@pytest.fixture
def maps():
    return torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(0)) * 3


def test_lse_tends_to_max_as_r_grows(maps):
    peak = maps.flatten(2).amax(2)
    errors = [float((LSEPooling(r)(maps) - peak).abs().max()) for r in (1.0, 10.0, 100.0, 1e4)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3  # at most log(30) / r below the maximum


def test_lse_tends_to_mean_as_r_shrinks(maps):
    mean = maps.flatten(2).mean(2)
    errors = [float((LSEPooling(r)(maps) - mean).abs().max()) for r in (1.0, 0.1, 1e-3, 1e-6)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-4


@pytest.mark.parametrize("r", [1e-3, 1.0, 10.0, 1e3])
def test_lse_lies_between_mean_and_max(maps, r):
    pooled = LSEPooling(r)(maps)
    assert torch.all(pooled >= maps.flatten(2).mean(2) - 1e-5)
    assert torch.all(pooled <= maps.flatten(2).amax(2) + 1e-5)


def test_lse_matches_the_definition_and_is_stable():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    r = 10.0
    reference = torch.log(torch.exp(r * x).flatten(2).mean(2)) / r  # fine for small values
    torch.testing.assert_close(LSEPooling(r)(x), reference)
    huge = torch.full((1, 2, 3, 3), 1e4)
    huge[0, 0, 1, 1] = 2e4
    out = LSEPooling(10.0)(huge)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1], torch.tensor(1e4))


def test_lse_gradient():
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LSEPooling(5.0), (x,))
    assert torch.autograd.gradcheck(LSEPooling(1e-3), (x,))


def test_lse_rejects_non_positive_r():
    with pytest.raises(ValueError, match="r > 0"):
        LSEPooling(0.0)


def test_classifier_shapes_and_heatmap():
    net = LSEClassifier(num_classes=5, backbone="resnet18", pretrained=False).eval()
    x = torch.rand(2, 1, 64, 64)
    assert net(x).shape == (2, 5)
    assert net.feature_map(x).shape == (2, 1024, 2, 2)
    cam = net.class_activation_map(x)
    assert cam.shape == (2, 5, 2, 2)
    # with r -> 0 the pooling is a mean, so each logit is the mean of its heatmap plus the bias
    net.pool.r = 1e-6
    with torch.no_grad():
        torch.testing.assert_close(net(x), cam.mean((2, 3)) + net.classifier.bias, rtol=1e-4, atol=1e-4)


def test_grey_input_equals_repeated_rgb_input():
    grey = LSEClassifier(num_classes=3, backbone="resnet18", pretrained=False, in_channels=1).eval()
    rgb = LSEClassifier(num_classes=3, backbone="resnet18", pretrained=False, in_channels=3).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)))


def test_classifier_is_scriptable():
    net = LSEClassifier(num_classes=4, backbone="resnet18", pretrained=False).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="ResNet"):
        LSEClassifier(backbone="vgg16", pretrained=False)


def _no_network(*args, **kwargs):
    raise URLError("no network in this test")


def test_pretrained_offline_fails_in_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        LSEClassifier(backbone="resnet18", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "--pretrained False" in message
    assert imagenet_weights_file("resnet18")[1] in message
    assert str(tmp_path) in message  # the hub cache under TORCH_HOME, where the file belongs


def test_pretrained_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    path = imagenet_weights_file("resnet18")[1]
    os.makedirs(os.path.dirname(path))
    torch.save(source.state_dict(), path)
    net = LSEClassifier(backbone="resnet18", pretrained=True)
    torch.testing.assert_close(net.backbone[0].weight, source.conv1.weight)
    torch.testing.assert_close(net.backbone[7][1].conv2.weight, source.layer4[1].conv2.weight)


def test_grad_cam_matches_its_definition():
    torch.manual_seed(0)
    net = LSEClassifier(num_classes=3, backbone="resnet18", pretrained=False).eval()
    x = torch.rand(1, 1, 96, 96)
    maps = ClassHeatmaps(net, layer="transition")(x, class_idx=2)
    assert set(maps) == {"lse", "gradcam"} and maps["gradcam"].shape == (96, 96)
    features = net.feature_map(x).detach().requires_grad_(True)
    logit = net.classifier(net.pool(features))[0, 2]
    (grad,) = torch.autograd.grad(logit, features)
    expected = torch.relu((grad.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True)).detach()
    expected = torch.nn.functional.interpolate(expected, size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(maps["gradcam"], expected, rtol=1e-4, atol=1e-5)
    lse = torch.nn.functional.interpolate(net.class_activation_map(x)[:, 2:3], size=(96, 96), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(maps["lse"], lse.detach())


def test_latest_checkpoint(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    (tmp_path / "model.pt").write_bytes(b"x")
    assert latest_checkpoint(str(tmp_path)) is None
    old, new = tmp_path / "checkpoint_epoch=3.pt", tmp_path / "checkpoint_final.pt"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 10, now - 10))
    os.utime(new, (now, now))
    assert latest_checkpoint(str(tmp_path)) == str(new)
    os.utime(old, (now + 10, now + 10))
    assert latest_checkpoint(str(tmp_path)) == str(old)
