"""MoCo v2 (Chen et al., 2020): a momentum key encoder and a queue of keys from every worker, InfoNCE.

Batch-norm leakage is handled as in the paper with shuffle-BN: the key encoder sees the global batch
shuffled across workers and, within a worker, runs on `shuffle_bn_splits` sub-batches of it (the
paper normalised 32 images per GPU). A key's BN statistics so come from a random group of images
other than the batch its query was normalised with, also on a single worker. The queries are
normalised over sub-batches of the same size (their BatchNorm takes each sub-batch apart), so that
queries and keys see comparable statistics, as on the paper's GPUs.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_models.batchnorm import convert_batchnorm
from ssl_models.distributed import gather_no_grad, world
from ssl_models.ema import ema_step, frozen_copy
from ssl_models.heads import mlp_head
from ssl_models.losses import queue_info_nce
from ssl_models.metrics import embedding_std
from ssl_models.method import SSLMethod
from ssl_models.schedules import cosine_schedule


class MoCo(SSLMethod):
    def __init__(self, backbone: nn.Module, feature_dim: int, total_steps: int, projector_hidden_dim: int = 2048,
                 projection_dim: int = 128, projector_layers: int = 2, queue_size: int = 65536,
                 temperature: float = 0.2, momentum_start: float = 0.999, momentum_end: float = 0.999,
                 shuffle_bn_splits: int = 8):
        super().__init__()
        self.query_encoder = nn.Sequential(backbone, mlp_head(feature_dim, projector_hidden_dim, projection_dim,
                                                              projector_layers, norm=False))  # MoCo v2: no BN
        convert_batchnorm(self.query_encoder)  # sub-batches (`groups`) set at the first step
        self.query_splits = 1
        self.key_encoder = frozen_copy(self.query_encoder)
        self.temperature = temperature
        self.shuffle_bn_splits = shuffle_bn_splits
        self.momentum_schedule = cosine_schedule(momentum_start, momentum_end, total_steps)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @property
    def trained(self) -> nn.Module:
        return self.query_encoder

    @property
    def backbone(self) -> nn.Module:
        return self.query_encoder[0]

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        """Key embeddings computed with shuffle-BN (across workers and sub-batches), in the local order."""
        rank, size = world()
        everything = gather_no_grad(images)
        order = torch.randperm(len(everything), device=images.device)
        if size > 1:
            dist.broadcast(order, src=0)
        mine = order.view(size, -1)[rank]
        shuffled = everything[mine]
        keys = torch.cat([self.key_encoder(part) for part in shuffled.tensor_split(self.splits(len(shuffled)))])
        keys = gather_no_grad(keys)[torch.argsort(order)].view(size, -1, keys.shape[1])[rank]
        return F.normalize(keys, dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Keys of every worker enter the queue, oldest out first."""
        keys = gather_no_grad(keys)
        positions = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[positions] = keys.to(self.queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + len(keys)) % len(self.queue))

    def splits(self, rows: int) -> int:
        """Sub-batches of a worker's batch for BatchNorm: at most `shuffle_bn_splits`, equal, of 2 rows or more."""
        return max(g for g in range(1, max(1, min(self.shuffle_bn_splits, rows // 2)) + 1) if rows % g == 0)

    def training_step(self, views: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        splits = self.splits(len(views[0]))
        if splits != self.query_splits:  # the batch size is fixed: the BatchNorm layers are set once
            convert_batchnorm(self.query_encoder, groups=splits)
            self.query_splits = splits
        queries = self.call_trained(views[0]).float()
        keys = self.keys(views[1]).float()
        loss = queue_info_nce(queries, keys, self.queue.clone(), self.temperature)
        self.enqueue(keys)
        return {"loss": loss, "projection_std": embedding_std(queries)}

    def after_optimizer_step(self, step: int) -> dict[str, float]:
        return ema_step(self.key_encoder, self.query_encoder, self.momentum_schedule, step, copy_buffers=False)  # as the reference
