"""Self-attention of a timm ViT's last block, for DINO's attention-map pictures (timm's AttentionExtract)."""
import copy

import torch
from timm.models.vision_transformer import VisionTransformer
from timm.utils import AttentionExtract


@torch.no_grad()
def last_block_cls_attention(vit: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(N, heads, grid_h, grid_w): how much the CLS token attends to each patch in the last block, per head."""
    twin = copy.deepcopy(vit)  # AttentionExtract keeps its hooks on, and leaves in eval mode, the model it is given
    last = len(twin.blocks) - 1
    twin.blocks[last].attn.fused_attn = False  # the weights exist only on the unfused path
    name = f"blocks.{last}.attn.attn_drop"
    weights = AttentionExtract(twin, names=[name], method="hook")(images)[name]
    grid_h = images.shape[-2] // vit.patch_embed.patch_size[0]
    grid_w = images.shape[-1] // vit.patch_embed.patch_size[1]
    return weights[:, :, 0, vit.num_prefix_tokens:].reshape(len(images), -1, grid_h, grid_w)
