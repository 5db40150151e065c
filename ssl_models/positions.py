"""Fixed 2-D sine-cosine position embeddings."""
import torch


def sincos_2d(dim: int, grid_height: int, grid_width: int, prefix_tokens: int = 0) -> torch.Tensor:
    """(prefix_tokens + H*W, dim): half the channels encode the row, half the column; prefixes get zeros."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, columns = torch.meshgrid(torch.arange(grid_height), torch.arange(grid_width), indexing="ij")
    angles_rows = rows.flatten()[:, None] * frequencies[None]
    angles_columns = columns.flatten()[:, None] * frequencies[None]
    embedding = torch.cat([angles_rows.sin(), angles_rows.cos(), angles_columns.sin(), angles_columns.cos()], dim=1)
    return torch.cat([torch.zeros(prefix_tokens, dim, dtype=torch.float64), embedding]).float()
