import pytest
import torch

from ssl_models import MAE, backbone_spec, create_backbone
from ssl_models.mae import masked_patch_loss, patchify, random_masking, unpatchify


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_keeps_the_right_count_and_restore_undoes_the_shuffle(ratio):
    torch.manual_seed(0)
    tokens = torch.arange(3 * 49, dtype=torch.float32).view(3, 49, 1).expand(-1, -1, 2).contiguous()
    kept, mask, restore = random_masking(tokens, ratio)
    keep = round(49 * (1 - ratio))
    assert kept.shape == (3, keep, 2)
    assert (mask.sum(1) == 49 - keep).all()
    # put the kept tokens back with placeholders for the masked ones: restore gives the original order
    padded = torch.cat([kept, torch.full((3, 49 - keep, 2), -1.0)], dim=1)
    unshuffled = torch.gather(padded, 1, restore[:, :, None].expand(-1, -1, 2))
    assert torch.equal(unshuffled[mask == 0], tokens[mask == 0])
    assert (unshuffled[mask == 1] == -1).all()
    # different images get different masks
    assert not torch.equal(mask[0], mask[1])


def test_patchify_roundtrip_and_order():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 4, 48)
    assert torch.equal(patches[0, 1].view(4, 4, 3)[..., 0], images[0, 0, :4, 4:8])
    assert torch.equal(unpatchify(patches, 4, 3, (2, 2)), images)


def test_unmasked_patches_contribute_nothing_to_the_loss():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    base = masked_patch_loss(prediction, target, mask, normalize_target=False)
    changed = prediction.clone()
    changed[mask == 0] += 100.0
    assert masked_patch_loss(changed, target, mask, False).item() == pytest.approx(base.item())
    direct = ((prediction - target) ** 2).mean(-1)[mask == 1].mean()
    assert base.item() == pytest.approx(direct.item(), rel=1e-6)
    normalized = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    direct_norm = ((prediction - normalized) ** 2).mean(-1)[mask == 1].mean()
    assert masked_patch_loss(prediction, target, mask, True).item() == pytest.approx(direct_norm.item(), rel=1e-5)


def tiny_mae(ratio=0.75):
    backbone, width = create_backbone(backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4))
    return MAE(backbone, width, 10, mask_ratio=ratio, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def test_encoder_sees_visible_patches_only_and_positions_are_fixed_sincos():
    torch.manual_seed(0)
    method = tiny_mae(0.75)
    seen = []
    method.backbone.blocks.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    out = method.training_step([torch.randn(2, 1, 28, 28)], 0)
    assert seen == [(2, 1 + round(49 * 0.25), 192)]
    out["loss"].backward()
    assert not method.backbone.pos_embed.requires_grad
    from timm.layers import build_sincos2d_pos_embed

    assert torch.count_nonzero(method.backbone.pos_embed[0, 0]) == 0  # the class token: no position
    assert torch.allclose(method.backbone.pos_embed[0, 1:], build_sincos2d_pos_embed([7, 7], 192))
    assert method.autoencoder.mask_token.grad is not None
    masked, reconstruction = method.reconstruct(torch.randn(2, 1, 28, 28))
    assert masked.shape == reconstruction.shape == (2, 1, 28, 28)


def test_mae_refuses_a_non_vit_backbone():
    backbone, width = create_backbone(backbone_spec("resnet18", in_chans=1))
    with pytest.raises(ValueError, match="MAE needs a ViT"):
        MAE(backbone, width, 10)
