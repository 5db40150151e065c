"""lightly 1.6's documented BYOL recipe (its examples/pytorch/byol.py: torchvision's ResNet-18, BYOL's heads
512-1024-256, SGD at 0.06, the momentum on a cosine schedule from 0.996 to 1 by epoch, BYOL's two views without
blur) on Fashion-MNIST at 28 pixels, fed by a DataLoader. Run by benchmarks/peers.py in lightly's own venv."""
import copy

import numpy as np
import torch
import torchvision
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmarks.peer_recipes.common import Clock, arguments, fashion_mnist, knn_top1, report


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(512, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class Images(Dataset):
    """Gray images as RGB PIL images, as torchvision's dataset classes give them to lightly's transforms."""
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.transform(Image.fromarray(self.images[index]).convert("RGB"))


def main() -> None:
    args = arguments(__doc__)
    command = Clock()
    torch.manual_seed(0)
    images, _ = fashion_mnist(args.source, "train")
    images = images[: args.limit]
    resnet = torchvision.models.resnet18()
    model = BYOL(nn.Sequential(*list(resnet.children())[:-1]))
    transform = BYOLTransform(view_1_transform=BYOLView1Transform(input_size=28, gaussian_blur=0.0),
                              view_2_transform=BYOLView2Transform(input_size=28, gaussian_blur=0.0))
    loader = DataLoader(Images(images, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    epoch_seconds = []
    for epoch in range(args.epochs):
        model.train()
        clock, momentum = Clock(), cosine_schedule(epoch, args.epochs, 0.996, 1)
        for step, (x0, x1) in enumerate(loader, 1):
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step % 20 == 0:
                print(f"epoch {epoch + 1} step {step}/{len(loader)} loss {loss.item():.3f} "
                      f"{step * args.batch_size / clock():.0f} img/s", flush=True)
        epoch_seconds.append(clock())
        print(f"epoch {epoch + 1}: {epoch_seconds[-1]:.1f} s", flush=True)
    training = sum(epoch_seconds)
    knn = knn_top1(model.backbone, args.source)
    report(epoch_seconds=epoch_seconds, images_per_epoch=len(loader) * args.batch_size, training_seconds=training,
           knn_top1_k20=knn, command_seconds=command())


if __name__ == "__main__":
    main()
