"""VGG16 classifier for grey radiographs (chestzoo.networks.vgg)."""

from urllib.error import URLError

import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from chestzoo.networks import vgg as vgg_module
from chestzoo.networks.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG16Classifier, fold_rgb_normalisation
from chestzoo.networks.weights import PretrainedWeightsUnavailable


def _trainable_features(model: VGG16Classifier) -> set[int]:
    return {int(name.split(".")[1]) for name, p in model.named_parameters() if name.startswith("features.") and p.requires_grad}


def test_folded_first_convolution_equals_rgb_copy_with_imagenet_normalisation():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    grey_conv = fold_rgb_normalisation(conv)
    grey = torch.rand(2, 1, 12, 12)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = conv((grey.repeat(1, 3, 1, 1) - mean) / std)
    got = grey_conv(grey)
    # identical away from the one-pixel border, where zero padding means different values in the two spaces
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[..., 0, :], expected[..., 0, :], atol=1e-3)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_shape_and_block_freezing(batch_norm):
    model = VGG16Classifier(num_classes=3, pretrained=False, trainable_blocks=2, batch_norm=batch_norm)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)
    pools = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
    trainable = _trainable_features(model)
    assert trainable and min(trainable) > pools[2], "blocks 1-3 must be frozen"
    assert all(p.requires_grad for p in model.head.parameters())
    if batch_norm:
        model.train()
        frozen_bn = [m for m in model.features[: pools[2] + 1] if isinstance(m, nn.BatchNorm2d)]
        trained_bn = [m for m in model.features[pools[2] + 1 :] if isinstance(m, nn.BatchNorm2d)]
        assert frozen_bn and not any(m.training for m in frozen_bn), "frozen blocks keep their batch-norm statistics"
        assert all(m.training for m in trained_bn)


def test_trainable_blocks_default_depends_on_pretraining(monkeypatch):
    scratch = VGG16Classifier(pretrained=False)
    assert scratch.trainable_blocks == 5 and 0 in _trainable_features(scratch)
    head_only = VGG16Classifier(pretrained=False, trainable_blocks=0)
    assert _trainable_features(head_only) == set()
    with pytest.raises(ValueError, match="trainable_blocks"):
        VGG16Classifier(pretrained=False, trainable_blocks=6)
    with pytest.raises(ValueError, match="head"):
        VGG16Classifier(pretrained=False, head="dense")


@pytest.fixture(scope="module")
def imagenet_like_state():
    """A full torchvision VGG16 state dict standing in for the ImageNet file (no download in tests)."""
    torch.manual_seed(1)
    return vgg16(weights=None).state_dict()


def test_pretrained_weights_are_loaded_and_folded(monkeypatch, imagenet_like_state):
    requested = []
    monkeypatch.setattr(vgg_module, "imagenet_state_dict", lambda name: requested.append(name) or imagenet_like_state)
    model = VGG16Classifier(pretrained=True, head="imagenet")
    assert requested == ["vgg16"]
    assert model.trainable_blocks == 1, "fine-tuning the top block by default"
    torch.testing.assert_close(model.features[28].weight, imagenet_like_state["features.28.weight"])
    torch.testing.assert_close(model.head[1].weight, imagenet_like_state["classifier.0.weight"])
    torch.testing.assert_close(model.head[4].weight, imagenet_like_state["classifier.3.weight"])
    assert model.head[7].out_features == 2
    reference = nn.Conv2d(3, 64, 3, padding=1)
    reference.load_state_dict({"weight": imagenet_like_state["features.0.weight"], "bias": imagenet_like_state["features.0.bias"]})
    torch.testing.assert_close(model.features[0].weight, fold_rgb_normalisation(reference).weight)
    assert _trainable_features(model) == {24, 26, 28}


def test_offline_without_weights_fails_in_one_clear_line(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        VGG16Classifier(pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert "--pretrained False" in message and "vgg16-397923af.pth" in message


def test_gradcam_layer_follows_input_size():
    model = VGG16Classifier(pretrained=False)
    names = dict(model.named_modules())
    for size, side in ((224, 14), (64, 8), (32, 8)):
        layer = model.gradcam_layer(size)
        assert isinstance(names[layer], nn.ReLU)
        seen = {}

        def record(module, inputs, output):
            seen["shape"] = output.shape

        handle = names[layer].register_forward_hook(record)
        model.eval()(torch.rand(1, 1, size, size))
        handle.remove()
        assert seen["shape"][-1] == side
    assert model.gradcam_layer() == model.gradcam_layer(224)


def test_torchscript_gives_the_same_output():
    model = VGG16Classifier(num_classes=3, pretrained=False, batch_norm=True).eval()
    x = torch.rand(2, 1, 32, 32)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
