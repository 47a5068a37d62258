"""Classification options: the shared :class:`~resnet_tune.engine.config.RunConfig` plus what one class an
image needs (input size, augmentation, mixing, class balance, the feature cache)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...data.options import FLIPS
from ...engine.config import OPTIMIZERS, SCHEDULES, WHITEN_HELP, RunConfig, option

__all__ = ["AUGMENTS", "BALANCE", "ClassificationConfig", "TrainConfig"]

AUGMENTS = ("default", "none", "trivialaugment", "randaugment")
BALANCE = ("none", "weighted_loss", "sampler")


@dataclass(frozen=True)
class ClassificationConfig(RunConfig):
    """Everything a classification run needs. ``None`` means "choose for me" where documented."""

    data: str | None = option(None, "training data: DIR/<class>/*.jpg, DIR/train|val|test/<class>, or a CSV of "
                                    "path,label (default: the embedded handwritten digits)")
    loader: str = option("auto", "memory: decode once into RAM and crop/flip in batches; workers: DataLoader "
                                 "workers with RandomResizedCrop; auto: memory up to 64 px (160 px on a CPU) if it "
                                 "fits in 2 GiB")
    model: str | None = option(None, "architecture (`resnet-tune models` lists them; default: resnet9_narrow for "
                                     "small images, else resnet18, or seresnext12d_64x4d at 128 px when photos "
                                     "train from scratch)")
    whiten: bool | None = option(None, WHITEN_HELP + " (default: on for resnet9/resnet9_narrow from scratch at up "
                                                     "to 64 px, their measured recipe; off otherwise)")
    weight_decay: float | None = option(None, "weight decay, never applied to BatchNorm and biases (default: 1e-3 "
                                              "for resnet9/resnet9_narrow from scratch at up to 64 px, else 5e-4)",
                                        range=(0.0, math.inf, ">= 0"))
    optimizer: str | None = option(None, "optimiser (default: adamw for seresnext10d/12d_64x4d from scratch, their "
                                         "measured recipe; else sgd)", choices=(None, *OPTIMIZERS))
    lr: Any = option(None, "peak learning rate, or auto: a learning-rate range test on the training data picks it "
                           "(the curve is saved as lr_find.png in the run folder) (default: 0.01 for "
                           "seresnext10d/12d_64x4d from scratch with AdamW; else the optimiser's rule, scaled to the "
                           "global batch for SGD)")
    schedule: str | None = option(None, "learning-rate schedule (flat_cos: flat at the peak for 75% of the steps, "
                                         "then cosine; poly: (1 - t/T)^power; triangle: airbench's, 0.2 of the "
                                         "peak rising to it over 23% of the steps, then down to 0.07) (default: "
                                         "flat_cos for seresnext10d/12d_64x4d from scratch; else onecycle)",
                                  choices=(None, *SCHEDULES))
    lookahead: int | None = option(None, "Lookahead (Zhang et al. 2019): every N optimiser steps the weights move "
                                         "back halfway to their slow copy, which then takes their place (0 = off; "
                                         "the paper uses 5) (default: 6 for seresnext10d/12d_64x4d from scratch; else "
                                         "0)", range=(0, math.inf, ">= 0 (0 turns Lookahead off)"))
    img_size: int | None = option(None, "input size in pixels (default: the model's, or 32 for small images)",
                                  range=(8, math.inf, "at least 8 pixels"))
    augment: str = option("default", "extra augmentation on top of crop + flip", choices=AUGMENTS)
    translate: int | None = option(None, "how far the training crop moves each way, in pixels (reflect padding; "
                                         "the in-memory loader at any size unless --min-scale takes random resized "
                                         "crops, DataLoader workers at 64 px or less; "
                                         "default: 2 for resnet9/resnet9_narrow from scratch at up to 64 px, as "
                                         "airbench, else an eighth of the side, 4 px at 32; 0 = none)",
                                   range=(0, math.inf, "at least 0"))
    min_scale: float | None = option(None, "an input size over 64 px: train on random resized crops "
                                           "(torchvision's RandomResizedCrop, fastai's min_scale) whose area is at "
                                           "least this share of the image's (the in-memory loader crops the centre "
                                           "square of the evaluation resize) (default: 0.25 with DataLoader "
                                           "workers; the in-memory loader moves a fixed-size crop by --translate)",
                                     range=(1e-6, 1.0, "in (0, 1]"))
    flip: str = option("random", "training flips: random (a coin for each image every epoch) or alternate (airbench: "
                                 "a coin for each image once, then flipped one way in even epochs and the other in "
                                 "odd ones; the in-memory loader)", choices=FLIPS)
    mixup: float = option(0.0, "mixup alpha (0 = off)", range=(0.0, math.inf, ">= 0 (0 turns mixup off)"))
    cutmix: float = option(0.0, "cutmix alpha (0 = off)", range=(0.0, math.inf, ">= 0 (0 turns cutmix off)"))
    cutout: float = option(0.0, "cutout: erase a square of this fraction of the image side in each training image, "
                                "e.g. 0.25 (8 px of 32; DeVries & Taylor 2017) (0 = off)",
                           range=(0.0, 1.0, "in [0, 1] (0 turns cutout off)"))
    balance: str = option("none", "imbalanced data: class-weighted loss or a balanced sampler", choices=BALANCE)
    drop_path_rate: float = option(0.0, "stochastic depth rate", range=(0.0, 0.999999, "at least 0 and below 1"))
    model_kwargs: Any = option(None, "architecture options of the model as KEY=VALUE pairs, fields of "
                                     "ResNetConfig (e.g. global_pool=max logit_scale=0.125 anti_alias=true; a "
                                     "mapping in YAML; timm's --model-kwargs); recorded in every checkpoint. "
                                     "From scratch act_layer is silu unless given (mish for "
                                     "seresnext10d/12d_64x4d; act_layer=relu: the classic ResNet)",
                               nargs="+")
    cache_views: int = option(1, "frozen-body epochs train the head on cached backbone features of this many "
                                 "augmented views of the training set (0 = run the backbone every epoch)",
                              range=(0, math.inf, ">= 0 (0 turns the feature cache off)"))
    label_smoothing: float = option(0.1, "label smoothing", range=(0.0, 0.999999, "in [0, 1)"))
    pretrained: str | None = option("auto", "weights to start from: auto (the model's published ImageNet weights: "
                                            "torchvision's, timm's or Keras's; from scratch for a model without any, "
                                            "or with a warning when they cannot be fetched), none (from scratch, no "
                                            "network), torchvision:<WEIGHTS>, timm:<name>, keras:<name>, hf:<repo>, "
                                            "a URL or a file")
    batch_size: int | None = option(None, "images per batch per process (default: 64, halved down to 16 while an "
                                          "epoch would have fewer than 16 steps)",
                                    range=(1, math.inf, "at least 1"))

    def __post_init__(self) -> None:
        super().__post_init__()
        from ...models import model_kwargs

        object.__setattr__(self, "model_kwargs", model_kwargs(self.model_kwargs, self.model) or None)

#: The name this configuration had before segmentation got its own (``resnet_tune.fit(TrainConfig(...))``).
TrainConfig = ClassificationConfig
