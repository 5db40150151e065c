"""A method made ready on one worker (device, global BatchNorm, optimizer, checkpoint, rank 0's state, DDP) and
its optimisation step (schedules, mixed precision, loss scaling, clipping, EMA), shared by the Ray Train loop
and the benchmarks."""
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from pipelines.config.schema import Config
from pipelines.storage.checkpoint import load_training_state
from pipelines.training.optimizer import build_optimizer, lr_schedule, weight_decay_schedule
from pipelines.training.teacher import build_with_teacher
from ssl_models import SSLMethod
from ssl_models.batchnorm import GlobalBatchNorm, convert_to_global_batchnorm
from ssl_models.distributed import broadcast_tensors, world
from ssl_models.schedules import value_at


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on GPUs that support it, fp16 (with loss scaling) on older ones (V100, T4), fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def use_global_batchnorm(method: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on CUDA (fused kernels, NCCL); on CPU, where it refuses to run, and for methods that
    normalise their views apart (SyncBatchNorm has no per-view statistics), our all-reduce one."""
    views_apart = any(isinstance(m, GlobalBatchNorm) and m.groups > 1 for m in method.modules())
    if device.type == "cuda" and not views_apart:
        return nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return convert_to_global_batchnorm(method)


@dataclass
class Prepared:
    method: SSLMethod
    optimizer: torch.optim.Optimizer
    restored: Optional[dict]  # step, epoch, metrics, rng_restored when resumed from a checkpoint


def prepare(config: Config, channels: int, steps_per_epoch: int, device: torch.device,
            checkpoint_folder: Optional[Path] = None, wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
            stats=None) -> Prepared:
    """Build the method on `device`, make its BatchNorm global when the config asks for it and there are
    several workers, restore a checkpoint, give every rank rank 0's state (targets, teachers, key encoders,
    queues, centres: DDP only broadcasts what it wraps), then wrap the trained network (DDP). `stats`: the data's
    (mean, std), for a distillation teacher."""
    method = build_with_teacher(config, channels, steps_per_epoch, stats).to(device)
    if world()[1] > 1 and config.sync_batchnorm():
        method = use_global_batchnorm(method, device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, method.trained, method.fixed_lr_parameters())
    restored = None
    if checkpoint_folder is not None:
        restored = load_training_state(checkpoint_folder, method, optimizer, world()[0])
    broadcast_tensors([*method.parameters(), *method.buffers()])
    trained = wrap(method.trained)
    if config.train.compile:
        trained = torch.compile(trained)
    method.wrap_trained(lambda _: trained)
    return Prepared(method, optimizer, restored)


def clip_all(module: torch.nn.Module, max_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)


@torch.no_grad()
def clip_each_parameter(module: torch.nn.Module, max_norm: float) -> None:
    """DINO's clipping: each parameter's gradient scaled down to norm `max_norm` on its own."""
    for parameter in module.parameters():
        if parameter.grad is not None:
            parameter.grad.mul_((max_norm / (parameter.grad.norm() + 1e-6)).clamp(max=1.0))


def clip_each_module(module: torch.nn.Module, max_norm: float) -> None:
    """DINOv2's clipping: the gradients of each submodule (the backbone, each head) clipped to norm `max_norm`
    together; the parameters `module` holds itself (DINOv2's mask token) form one more group."""
    for parameters in [list(child.parameters()) for child in module.children()] + [list(module.parameters(False))]:
        if parameters:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)


CLIPPING = {"global": clip_all, "per_parameter": clip_each_parameter, "per_module": clip_each_module}


def scaled_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                after_backward: Optional[Callable[[], None]] = None, clip: Optional[Callable[[], None]] = None) -> bool:
    """Backward through the (fp16) loss scaler, `clip` on the unscaled gradients, the optimizer step.
    False when fp16 gradients held inf/nan: the step was skipped and the scale lowered."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if after_backward is not None:
        after_backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        clip()
    scaler.step(optimizer)
    if not scaler.is_enabled():
        return True
    scale = scaler.get_scale()
    scaler.update()
    return scaler.get_scale() >= scale


class TrainStep:
    """One optimisation step. Returns the step's values as tensors on the device (no host sync) and the
    scheduled values as floats."""

    def __init__(self, config: Config, method: SSLMethod, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 device: torch.device):
        self.method, self.optimizer, self.clip = method, optimizer, config.optim.clip_grad
        self.clip_norm = CLIPPING[config.optim.clip_mode]
        self.precision = resolve_precision(config.train.precision, device)
        self.autocast = autocast_for(self.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.lrs, self.wds = lr_schedule(config, steps_per_epoch), weight_decay_schedule(config, steps_per_epoch)
        self.momentum_buffers = method.momentum_batchnorm_buffers() if world()[1] > 1 else []
        self.skipped_steps = 0

    def __call__(self, views: list[torch.Tensor], step: int, inputs: Optional[dict] = None) -> dict:
        """`inputs`: what the batch brings for the method besides its views (DINOv2's masks)."""
        method, optimizer, scaler = self.method, self.optimizer, self.scaler
        lr, weight_decay = value_at(self.lrs, step), value_at(self.wds, step)
        for group in optimizer.param_groups:
            if not group.get("fixed_lr"):  # SimSiam's fix-pred-lr: the predictor keeps the initial lr
                group["lr"] = lr * group.get("lr_scale", 1.0)
            if group["weight_decay"] > 0:  # biases and norms stay at 0
                group["weight_decay"] = weight_decay
        with self.autocast():
            outputs = method.training_step(views, step, **(inputs or {}))
        clip = (lambda: self.clip_norm(method.trained, self.clip)) if self.clip else None
        if scaled_step(outputs["loss"], optimizer, scaler, lambda: method.after_backward(step), clip):
            logged = method.after_optimizer_step(step)
        else:  # the EMA follows only steps the optimizer took
            logged, self.skipped_steps = {}, self.skipped_steps + 1
        broadcast_tensors(self.momentum_buffers)
        detached = {key: value.detach() if isinstance(value, torch.Tensor) else value for key, value in outputs.items()}
        return {**detached, "lr": lr, **logged}
