"""Per-iteration schedules: arrays indexed by the global step, so there is no scheduler state to drift."""
import math

import torch


def cosine_schedule(start: float, end: float, total_steps: int) -> torch.Tensor:
    """`start` at step 0, `end` at the last step, following half a cosine."""
    steps = torch.arange(max(total_steps, 1), dtype=torch.float64)
    progress = steps / max(total_steps - 1, 1)
    return end + (start - end) * 0.5 * (1.0 + torch.cos(math.pi * progress))


def warmup_cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int, warmup_start: float = 0.0
) -> torch.Tensor:
    """Linear warm-up from `warmup_start` to `base` over `warmup_steps`, then cosine down to `final`."""
    warmup_steps = min(warmup_steps, total_steps)
    warmup = torch.linspace(warmup_start, base, warmup_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([warmup, cosine_schedule(base, final, total_steps - warmup_steps)])[:total_steps]


def value_at(schedule: torch.Tensor, step: int) -> float:
    """The schedule's value at `step`, holding the last value past its end."""
    return float(schedule[min(step, len(schedule) - 1)])
