import pytest
import timm
import torch

from ssl_models import backbone_spec, create_backbone
from ssl_models.small_stem import PLAIN_STEM_RESNETS


def test_resnet_small_stem_keeps_spatial_detail():
    standard, width = create_backbone(backbone_spec("resnet18", in_chans=1, image_size=28))
    small, _ = create_backbone(backbone_spec("resnet18", in_chans=1, image_size=28, small_stem=True))
    assert width == 512
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    x = torch.randn(2, 1, 28, 28)
    assert standard(x).shape == small(x).shape == (2, 512)
    assert small.forward_features(x).shape[-1] == 4 and standard.forward_features(x).shape[-1] == 1


def test_vit_patch_and_image_size():
    model, width = create_backbone(backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4))
    assert width == 192
    assert model.patch_embed.num_patches == 49
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 192)


def test_unknown_backbone_suggests_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet81'.*resnet18"):
        backbone_spec("resnet81")


def test_small_stem_only_for_resnets():
    with pytest.raises(ValueError, match="small_stem applies to ResNets"):
        backbone_spec("vit_tiny_patch16_224", small_stem=True)
    with pytest.raises(ValueError, match="small_stem applies to ResNets whose stem is one 7x7 .* not 'resnet18d'"):
        backbone_spec("resnet18d", small_stem=True)  # a deep stem: three 3x3 convolutions


def test_small_stem_resnets_are_timm_models_of_their_own():
    for name in PLAIN_STEM_RESNETS:  # each has the one 7x7 convolution and max-pool the small stem replaces
        with torch.device("meta"):
            plain, small = timm.create_model(name), timm.create_model(f"{name}_small_stem", num_classes=0)
        assert plain.conv1.kernel_size == (7, 7) and isinstance(plain.maxpool, torch.nn.MaxPool2d), name
        assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity), name
    ours, _ = create_backbone(backbone_spec("resnet18", in_chans=1, image_size=28, small_stem=True))
    timms = timm.create_model("resnet18_small_stem", num_classes=0, in_chans=1)
    timms.load_state_dict(ours.state_dict())  # strict: the same layers and shapes
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(ours.eval()(x), timms.eval()(x))
    with pytest.raises(ValueError, match="no released weights: pass the file"):
        timm.create_model("resnet18_small_stem", pretrained=True)
