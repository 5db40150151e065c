"""The supervised protocols' settings and result (see evaluation.finetune)."""
from dataclasses import dataclass
from typing import Optional

SUPERVISED = ("finetune", "scratch", "linear_aug", "linear_dino")
FROZEN = ("linear_aug", "linear_dino")  # the backbone as pretrained, a linear classifier on its features


# logical CPUs: a Train worker and an augmentation actor half a CPU each, the test decoding actor a quarter and
# each read an eighth, so that two workers fit on two cores (threads are set explicitly; these numbers only decide what Ray schedules side by side)
WORKER_CPUS, AUGMENT_CPUS, EVAL_CPUS, READ_CPUS = 0.5, 0.5, 0.25, 0.125


def required_cpus(settings: "FinetuneSettings") -> float:
    return settings.num_workers * WORKER_CPUS + settings.augment_actors * AUGMENT_CPUS + EVAL_CPUS + 2 * READ_CPUS


FINETUNE_DROP_PATH = 0.1  # MAE's fine-tuning recipe for ViTs (stochastic depth; BEiT's too)


@dataclass
class FinetuneSettings:
    protocol: str = "finetune"
    epochs: int = 10
    batch_size: int = 128  # per worker
    lr: Optional[float] = None  # per 256 images; None: 1e-3 (AdamW) for fine-tuning, 0.1 (SGD) for linear_aug,
    # 0.001 (SGD) for linear_dino
    layer_decay: float = 0.75  # ViTs only
    warmup_epochs: float = 1.0
    label_smoothing: Optional[float] = None  # None: 0.1 for fine-tuning, 0 for linear_aug
    weight_decay: Optional[float] = None  # None: 0.05 for fine-tuning, 0 for linear_aug
    crop_scale_min: float = 0.2  # MAE uses 0.08 on ImageNet; 28 px images keep more of the object
    drop_path: Optional[float] = None  # ViTs trained whole; None: 0.1 (MAE's fine-tuning), 0 for linear_aug
    global_pool: Optional[str] = None  # ViTs: "token" or "avg"; None: avg after MAE pretraining, else token
    mixup: float = 0.0  # finetune and scratch: mixup's alpha (MAE: 0.8); 0: off
    cutmix: float = 0.0  # cutmix's alpha (MAE: 1.0); with mixup, one of them per batch
    rand_augment: Optional[str] = None  # timm's RandAugment setting (MAE: rand-m9-mstd0.5-inc1)
    random_erasing: float = 0.0  # the chance to erase a random box of each image with noise (MAE: 0.25)
    last_blocks: int = 4  # linear_dino: the class tokens of this many last blocks
    avg_patch_tokens: bool = False  # linear_dino: and the last block's patch tokens averaged
    num_workers: int = 1
    augment_actors: int = 1
    train_limit: Optional[int] = None  # a stratified random subset of the labelled train rows
    test_limit: Optional[int] = None
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in SUPERVISED:
            raise ValueError(f"unknown supervised protocol '{self.protocol}'; choose from {', '.join(SUPERVISED)}")
        linear = self.protocol in FROZEN
        self.lr = self.lr if self.lr is not None else {"linear_aug": 0.1, "linear_dino": 0.001}.get(self.protocol, 1e-3)
        self.label_smoothing = self.label_smoothing if self.label_smoothing is not None else (0.0 if linear else 0.1)
        self.weight_decay = self.weight_decay if self.weight_decay is not None else (0.0 if linear else 0.05)
        self.drop_path = self.drop_path if self.drop_path is not None else (0.0 if linear else FINETUNE_DROP_PATH)
        if self.global_pool not in (None, "token", "avg"):
            raise ValueError(f"global_pool '{self.global_pool}': choose token (the class token) or avg (the patch tokens)")
        if linear and (self.drop_path or self.global_pool not in (None, "token")):
            raise ValueError(f"{self.protocol} keeps the backbone as pretrained: no drop_path or global_pool")
        self.check_regularisers(linear)
        if self.last_blocks < 1:
            raise ValueError(f"last_blocks {self.last_blocks}: at least the last block")

    def check_regularisers(self, linear: bool) -> None:
        on = [name for name in ("mixup", "cutmix", "rand_augment", "random_erasing") if getattr(self, name)]
        if linear and on:
            raise ValueError(f"{self.protocol} trains a linear head on the crop and flip alone: no {', '.join(on)}")
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)}: an alpha of 0 (off) or more")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing {self.random_erasing}: a chance between 0 and 1")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"batch_size {self.batch_size}: mixup and cutmix pair each image with another, "
                             "so the batch size per worker must be even")
        if self.rand_augment:
            from pipelines.data.finetune_augment import rand_augment

            rand_augment(self.rand_augment, 32, (0,))


@dataclass
class FinetuneResult:
    top1: float
    curve: list[float]  # test top-1 after each epoch
    losses: list[float]  # mean training loss of each epoch
    images_per_second: float
    checkpoint: str  # the trained classifier (classifier.safetensors, backbone.json)
