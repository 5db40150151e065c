"""A paper's training recipe as data (the `recipe` block of the photo presets), and how a configuration departs
from it: `recipe_differences` names each setting that is not the paper's, so a run says so before it starts."""
from typing import Literal, Optional

from pydantic import Field

from pipelines.config.methods import local_crop_size
from pipelines.config.section import Section


class Recipe(Section):
    paper: str = Field(description="the paper (authors, title, venue, year) and where in it the recipe is")
    optimizer: Literal["adamw", "lars", "sgd"]
    lr: float = Field(gt=0, description="the base learning rate, per the batch rule below")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(description="the batch rule: linear, per 256 images; sqrt, "
                                                          "x sqrt(batch / 1024) (optim.lr_scaling)")
    batch: int = Field(ge=1, description="the paper's global batch (the rule scales the lr to the run's)")
    weight_decay: float = Field(ge=0)
    weight_decay_end: Optional[float] = Field(None, ge=0, description="cosine to this; null: constant")
    warmup_epochs: float = Field(ge=0, description="linear warm-up, then cosine decay to min_lr")
    min_lr: float = Field(ge=0)
    epochs: int = Field(ge=1, description="the schedule whose result the paper reports")
    image_size: int = Field(ge=8, description="the global crops' side")
    crop_scale_min: float = Field(gt=0, le=1, description="the smallest area of the (global) random resized crop")
    local_crops: int = Field(0, ge=0, description="multi-crop: the small crops beside the two global ones")
    local_crop_size: Optional[int] = Field(None, ge=4)
    notes: str = Field("", description="what of the paper the project does not reproduce")


def recipe_values(config) -> dict[str, object]:
    """The settings of `config` a recipe states, by the recipe's field names (`config`: a schema.Config)."""
    method, optim = config.method.model_dump(), config.optim
    global_scale = method.get("global_crop_scale")
    local_crops = method.get("num_local_crops", 0)
    local_size = local_crop_size(config.data.image_size, method) if local_crops else None
    return {"optimizer": optim.name, "lr": optim.lr, "lr_scaling": optim.lr_scaling,
            "weight_decay": optim.weight_decay, "weight_decay_end": optim.weight_decay_end,
            "warmup_epochs": optim.warmup_epochs, "min_lr": optim.min_lr, "epochs": config.train.epochs,
            "image_size": config.data.image_size,
            "crop_scale_min": global_scale[0] if global_scale else config.crop_scale_min(),
            "local_crops": local_crops, "local_crop_size": local_size}


SETTING = {"optimizer": "optim.name", "lr": "optim.lr", "lr_scaling": "optim.lr_scaling",
           "weight_decay": "optim.weight_decay", "weight_decay_end": "optim.weight_decay_end",
           "warmup_epochs": "optim.warmup_epochs", "min_lr": "optim.min_lr", "epochs": "train.epochs",
           "image_size": "data.image_size", "crop_scale_min": "the crop's smallest area",
           "local_crops": "method.num_local_crops", "local_crop_size": "the local crops' side"}


def recipe_differences(config) -> list[str]:
    """`setting value (paper: value)` for each recipe value `config` does not keep; [] without a recipe."""
    recipe = config.recipe
    if recipe is None:
        return []
    values = recipe_values(config)
    return [f"{SETTING[key]} {values[key]} (paper: {getattr(recipe, key)})" for key in SETTING
            if values[key] != getattr(recipe, key) and not (key == "local_crop_size" and not values["local_crops"])]


def batch_note(config) -> Optional[str]:
    """How the run's global batch relates to the paper's, and the lr the batch rule gives it; None: the same."""
    recipe = config.recipe
    if recipe is None or config.global_batch() == recipe.batch:
        return None
    return (f"global batch {config.global_batch()} (paper: {recipe.batch}): {recipe.lr_scaling} lr scaling gives "
            f"lr {config.effective_lr():.4g}")


def recipe_notes(config) -> list[str]:
    """What a run prints before it starts: its departures from the preset's paper, and the batch rule at work."""
    differences, batch = recipe_differences(config), batch_note(config)
    departs = [f"departs from the recipe of {config.recipe.paper}: {'; '.join(differences)}"] if differences else []
    return departs + ([batch] if batch else [])
