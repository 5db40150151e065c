import pytest
import torch

from ssl_models import backbone_spec, create_backbone


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
