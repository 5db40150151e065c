"""MAE (He et al., 2022): a ViT encodes the visible patches only; a light decoder rebuilds the masked pixels."""
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ssl_models.method import SSLMethod


def sincos_2d(dim: int, grid: tuple[int, int], prefix_tokens: int = 0) -> torch.Tensor:
    """(prefix_tokens + H*W, dim): timm's fixed 2-D sin-cos embedding (a quarter of the channels each for the
    sine and cosine of rows and of columns); prefix tokens get zeros, as in MAE."""
    if dim % 4:
        raise ValueError(f"MAE's sin-cos position embedding needs a width divisible by 4, got {dim}")
    return torch.cat([torch.zeros(prefix_tokens, dim), build_sincos2d_pos_embed(list(grid), dim)])


def random_masking(tokens: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keeps round(L * (1 - mask_ratio)) tokens per sample, chosen by sorting uniform noise.

    Returns the kept tokens, the mask (1 = masked, in the original order) and the indices that undo the shuffle.
    """
    batch, length, width = tokens.shape
    keep = round(length * (1 - mask_ratio))
    shuffle = torch.argsort(torch.rand(batch, length, device=tokens.device), dim=1)
    restore = torch.argsort(shuffle, dim=1)
    kept = torch.gather(tokens, 1, shuffle[:, :keep, None].expand(-1, -1, width))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, restore), restore


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p * W/p, p*p*C), patches in row-major order."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    n = patches.shape[0]
    x = patches.reshape(n, grid[0], grid[1], patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, channels, grid[0] * patch, grid[1] * patch)


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      normalize_target: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only."""
    if normalize_target:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((prediction - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    def __init__(self, encoder: VisionTransformer, decoder_dim: int, decoder_depth: int, decoder_heads: int):
        super().__init__()
        self.encoder = encoder
        grid = encoder.patch_embed.grid_size
        self.patch = encoder.patch_embed.patch_size[0]
        self.channels = encoder.patch_embed.proj.in_channels
        prefix = encoder.num_prefix_tokens
        with torch.no_grad():
            encoder.pos_embed.copy_(sincos_2d(encoder.embed_dim, grid, prefix_tokens=prefix)[None])
        encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(decoder_dim, grid, prefix_tokens=prefix)[None])
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.channels)
        self.reference_init()

    def reference_init(self) -> None:
        """MAE's initialisation of encoder and decoder: xavier-uniform linear layers (the patch embedding's
        kernel as one flat matrix), zero biases, unit LayerNorms, normal(0.02) class and mask tokens."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        kernel = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(kernel.data.view(kernel.shape[0], -1))
        nn.init.zeros_(self.encoder.patch_embed.proj.bias)
        for token in (self.encoder.cls_token, self.mask_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float):
        encoder = self.encoder
        tokens = encoder.patch_embed(images)
        tokens = tokens.flatten(1, 2) if tokens.ndim == 4 else tokens
        prefix = encoder.num_prefix_tokens
        tokens = tokens + encoder.pos_embed[:, prefix:]
        visible, mask, restore = random_masking(tokens, mask_ratio)
        if prefix:
            cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(images), -1, -1)
            visible = torch.cat([cls, visible], dim=1)
        return encoder.norm(encoder.blocks(visible)), mask, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        length = restore.shape[1]
        masks = self.mask_token.expand(len(x), length + prefix - x.shape[1], -1)
        patches = torch.cat([x[:, prefix:], masks], dim=1)
        patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :prefix], patches], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, prefix:]

    def forward(self, images: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted patches, mask)"""
        latent, mask, restore = self.forward_encoder(images, mask_ratio)
        return self.forward_decoder(latent, restore), mask


class MAE(SSLMethod):
    num_views = 1

    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, mask_ratio: float = 0.75,
                 decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 normalize_target: bool = True):
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"MAE needs a ViT backbone (e.g. vit_tiny_patch16_224), got {type(backbone).__name__}")
        self.autoencoder = MaskedAutoencoder(backbone, decoder_dim, decoder_depth, decoder_heads)
        self.mask_ratio = mask_ratio
        self.normalize_target = normalize_target

    @property
    def trained(self) -> nn.Module:
        return self.autoencoder

    @property
    def backbone(self) -> nn.Module:
        return self.autoencoder.encoder

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        prediction, mask = self.call_trained(views[0], self.mask_ratio)
        target = patchify(views[0], self.autoencoder.patch)
        return {"loss": masked_patch_loss(prediction.float(), target.float(), mask, self.normalize_target)}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction with the visible patches pasted back), both image-shaped, for pictures."""
        auto = self.autoencoder
        prediction, mask = auto(images, self.mask_ratio)
        target = patchify(images, auto.patch)
        if self.normalize_target:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            prediction = prediction * (var + 1e-6).sqrt() + mean
        grid = auto.encoder.patch_embed.grid_size
        visible = target * (1 - mask[..., None])
        pasted = visible + prediction * mask[..., None]
        return (unpatchify(visible, auto.patch, auto.channels, grid),
                unpatchify(pasted, auto.patch, auto.channels, grid))
