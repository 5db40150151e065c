"""Collectives that keep autograd, so losses can see the whole global batch (pure torch.distributed)."""
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenation of `tensor` from every worker in rank order; gradients flow back to each worker's part."""
    if world()[1] == 1:
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    rank, size = world()
    if size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_objects(value) -> list:
    """`value` (any picklable object) of every worker, in rank order."""
    if world()[1] == 1:
        return [value]
    values = [None] * world()[1]
    dist.all_gather_object(values, value)
    return values


@torch.no_grad()
def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Sets every rank's `tensors` (in place) to rank `src`'s, one broadcast per dtype."""
    if world()[1] == 1 or not tensors:
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault(tensor.dtype, []).append(tensor)
    for group in groups.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        dist.broadcast(flat, src)
        for tensor, part in zip(group, flat.split([tensor.numel() for tensor in group])):
            tensor.copy_(part.view_as(tensor))
