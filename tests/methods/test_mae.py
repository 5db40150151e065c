"""MAE: the masking, patches, the loss on masked patches, the encoder's view; two real Ray Train workers keep
identical replicas."""
import pytest
import torch

from pipelines.config.load import load_config
from pipelines.training.methods import build_method
from ssl_models import MAE, backbone_spec, create_backbone
from ssl_models.mae import masked_patch_loss, patchify, random_masking, unpatchify
from tests.helpers import results_of, tiny_method, two_worker_check


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
    return tiny_method("mae", backbone, width, mask_ratio=ratio)


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


@two_worker_check
def _mae_step(rank: int) -> dict:
    """A training step on each rank's own images (and masks); every parameter and buffer afterwards."""
    import ray.train.torch

    from pipelines.training.step import TrainStep, prepare

    config = load_config(None, ["method.name=mae", "model.backbone=vit_tiny_patch16_224", "model.patch_size=4",
                                "method.decoder_dim=32", "method.decoder_depth=1", "method.decoder_heads=2",
                                "data.batch_size=4", "train.num_workers=2", "optim.warmup_epochs=0"])
    torch.manual_seed(100 + rank)  # as the loop does: each rank seeds seed + rank, so initialisations differ
    own_init = build_method(config, 1, 10).autoencoder.decoder_embed.weight.detach().clone()
    torch.manual_seed(100 + rank)
    prepared = prepare(config, 1, 10, torch.device("cpu"), wrap=ray.train.torch.prepare_model)
    method = prepared.method
    before = {name: parameter.detach().clone() for name, parameter in method.named_parameters()}
    torch.manual_seed(200 + rank)  # different images on each rank
    step = TrainStep(config, method, prepared.optimizer, 10, torch.device("cpu"))
    loss = step([torch.randn(4, 1, 28, 28)], 0)["loss"]
    in_ddp = {id(tensor) for tensor in [*method.trained.parameters(), *method.trained.buffers()]}
    state = dict([*method.named_parameters(), *method.named_buffers()])
    return {"own_init": own_init, "loss": loss,
            "state": {name: tensor.detach().clone() for name, tensor in state.items()},
            "outside_ddp": [name for name, tensor in state.items() if id(tensor) not in in_ddp],
            "moved": [name for name, tensor in before.items() if not torch.equal(tensor, state[name])]}


@pytest.mark.slow
def test_after_a_step_on_two_workers_every_rank_holds_the_same_encoder_and_decoder(two_worker_results):
    results = results_of(two_worker_results, _mae_step)
    # each rank built its own autoencoder before the start-up broadcast, and trained on its own images
    assert not torch.equal(results[0]["own_init"], results[1]["own_init"])
    assert results[0]["loss"].item() != results[1]["loss"].item()
    # MAE keeps nothing outside the DDP-wrapped autoencoder: encoder, decoder, mask token and the fixed positions
    assert results[0]["outside_ddp"] == [] and results[1]["outside_ddp"] == []
    names = results[0]["state"].keys()
    assert {"autoencoder.mask_token", "autoencoder.decoder_pos_embed", "autoencoder.encoder.pos_embed"} <= set(names)
    moved = results[0]["moved"]  # trained (no warm-up), the fixed positions left alone
    assert "autoencoder.mask_token" in moved and "autoencoder.encoder.pos_embed" not in moved
    for name in names:
        assert torch.equal(results[0]["state"][name], results[1]["state"][name]), name
