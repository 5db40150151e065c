"""LightlyTrain 0.18's SimCLR (`lightly_train.train(method="simclr")`, its own defaults but the image size, batch,
epochs and worker count) on Fashion-MNIST written as a folder of PNG files, torchvision's ResNet-18 on the CPU;
then its exported backbone under the project's kNN protocol. Run by benchmarks/peers.py in LightlyTrain's venv."""
import os
from pathlib import Path

import torch
import torchvision
from PIL import Image

from benchmarks.peer_recipes.common import Clock, arguments, fashion_mnist, knn_top1, report


def image_folder(images, folder: Path) -> Path:
    """The images as PNG files (written once; LightlyTrain reads a folder)."""
    done = folder / ".complete"
    if not done.exists() or int(done.read_text()) != len(images):
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{index:05d}.png")
        done.write_text(str(len(images)))
    return folder


def main() -> None:
    args = arguments(__doc__)
    command = Clock()
    os.environ.setdefault("LIGHTLY_TRAIN_EVENTS_DISABLED", "1")
    import lightly_train

    images, _ = fashion_mnist(args.source, "train")
    images = images[: args.limit]
    clock = Clock()
    data = image_folder(images, Path(args.out) / f"images_{len(images)}")
    prepare = clock()  # the project's ingest is not counted in its command either
    run = Path(args.out) / "run"
    clock = Clock()
    lightly_train.train(out=run, data=data, model="torchvision/resnet18", method="simclr", epochs=args.epochs,
                        batch_size=args.batch_size, num_workers=args.workers, accelerator="cpu", devices=1,
                        transform_args={"image_size": (28, 28)}, overwrite=True)
    training = clock()
    resnet = torchvision.models.resnet18()
    resnet.load_state_dict(torch.load(run / "exported_models" / "exported_last.pt", map_location="cpu",
                                     weights_only=True))
    resnet.fc = torch.nn.Identity()
    knn = knn_top1(resnet, args.source)
    report(epoch_seconds=[], images_per_epoch=len(images), training_seconds=training, knn_top1_k20=knn,
           command_seconds=command(), prepare_seconds=prepare)


if __name__ == "__main__":
    main()
