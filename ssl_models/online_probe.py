"""The online linear probe (solo-learn's online classifier): a linear classifier trained alongside pretraining on
the detached backbone features of each training batch, with its own optimizer, so a labelled dataset shows at every
step how linearly separable the representation is, without a separate evaluation."""
import torch
from torch import nn

from ssl_models.distributed import broadcast_tensors, world


def linear_classifier(width: int, num_classes: int) -> nn.Module:
    """A parameter-free BatchNorm then a linear layer (MAE's linear probe): insensitive to the features' scale."""
    return nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), nn.Linear(width, num_classes))


class FirstOutput:
    """Keeps the first output of `module` since the last `take()` (a method's first backbone call embeds the
    first view, alone or at the head of the concatenated views)."""

    def __init__(self, module: nn.Module):
        self.output = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        if self.output is None:
            self.output = output.detach()

    def take(self):
        output, self.output = self.output, None
        return output


class OnlineProbe(nn.Module):
    def __init__(self, width: int, num_classes: int, lr: float = 0.1):
        super().__init__()
        self.classifier = linear_classifier(width, num_classes)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=lr, momentum=0.9)

    def start_in_sync(self) -> "OnlineProbe":
        """Rank 0's initial weights on every worker (each rank seeds differently); averaged gradients then keep
        the copies identical."""
        broadcast_tensors(list(self.classifier.parameters()))
        return self

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SGD step on the labelled rows (labels >= 0); the batch's accuracy measured before it. Gradients are
        averaged over the workers, so every worker keeps the same probe. Tensors only: no host sync."""
        labels = labels.to(features.device).long()
        labelled = (labels >= 0).float()
        count = labelled.sum().clamp(min=1)
        logits = self.classifier(features.detach().float())
        losses = nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        loss = (losses * labelled).sum() / count
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        workers = world()[1]
        if workers > 1:  # summed then divided: gloo has no AVG
            for parameter in self.classifier.parameters():
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= workers
        self.optimizer.step()
        correct = ((logits.argmax(1) == labels).float() * labelled).sum() / count
        return {"online_probe_loss": loss.detach(), "online_probe_top1": correct.detach()}
