"""Self-attention of a timm ViT's last block, for DINO's attention-map pictures."""
import torch
from timm.models.vision_transformer import VisionTransformer


@torch.no_grad()
def last_block_cls_attention(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(N, heads, grid_h, grid_w): how much the CLS token attends to each patch in the last block, per head."""
    captured = {}
    attention = vit.blocks[-1].attn
    handle = attention.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    was_training = vit.training
    vit.eval()
    try:
        vit.forward_features(images)
    finally:
        handle.remove()
        vit.train(was_training)
    x = captured["x"]
    batch, tokens, _ = x.shape
    qkv = attention.qkv(x).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
    weights = ((q * attention.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    prefix = vit.num_prefix_tokens
    grid_h, grid_w = images.shape[-2] // vit.patch_embed.patch_size[0], images.shape[-1] // vit.patch_embed.patch_size[1]
    return weights[:, :, 0, prefix:].reshape(batch, attention.num_heads, grid_h, grid_w)
