"""The linear probe on frozen features: a parameter-free BatchNorm and a linear layer (as MAE's protocol),
SGD with momentum and a cosine schedule, the learning rate chosen on a held-out part of the training
features from a small grid (as DINO's evaluation sweeps it), accuracy reported on the queries."""
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pipelines.data.sampling import stratified_holdout
from ssl_models.online_probe import linear_classifier


@dataclass
class ProbeResult:
    top1: float  # on the queries, with the chosen lr
    lr: float
    validation: dict[float, float]  # held-out accuracy per lr tried
    curve: list[float] = field(default_factory=list)  # held-out accuracy per epoch, chosen lr


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(features).argmax(1) == labels).float().mean().item()


def batches_of(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`order` cut into batches; a last batch of one row joins the one before it (the probe's BatchNorm cannot
    normalise a single row in training mode)."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float, epochs: int,
                batch_size: int, weight_decay: float, seed: int, check=None) -> tuple[nn.Module, list[float]]:
    """Trains one probe; `check` (features, labels) is scored after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = linear_classifier(features.shape[1], num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * len(batches_of(torch.arange(len(features)), batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    curve = []
    for _ in range(epochs):
        model.train()
        for batch in batches_of(torch.randperm(len(features), generator=generator), batch_size):
            loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if check is not None:
            curve.append(accuracy(model, *check))
    return model, curve


def linear_probe(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, lrs=(0.01, 0.1, 1.0), epochs: int = 50, batch_size: int = 256,
                 weight_decay: float = 0.0, holdout: float = 0.1, seed: int = 0) -> ProbeResult:
    """Each lr trains on (1 - holdout) of `train` and is scored on the rest; the best one's probe is
    scored on the queries."""
    rest, held = stratified_holdout(train_labels.numpy(), holdout, seed)
    fit = (train[rest].float(), train_labels[rest])
    check = (train[held].float(), train_labels[held])
    results = {}
    for lr in lrs:
        model, curve = train_probe(*fit, num_classes, lr, epochs, batch_size, weight_decay, seed, check)
        results[lr] = (curve[-1], model, curve)
    best = max(results, key=lambda lr: results[lr][0])
    _, model, curve = results[best]
    return ProbeResult(accuracy(model, queries.float(), query_labels), best,
                       {lr: value[0] for lr, value in results.items()}, curve)
