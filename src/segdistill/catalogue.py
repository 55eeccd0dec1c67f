"""The registered models as ``segdistill models`` lists them, readable without importing torch.

Listing models is a first-hour command: it should answer at once, not after loading PyTorch to
build 80M parameters. The table is written out here; ``tests/test_models.py`` builds every
registered model and checks it against this table (names, width, depth, parameters, description),
so a new or changed model fails the suite until its row is here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    base: int | None
    """Width of the first level (None: the model has no ``base`` argument)."""
    depth: int | None
    params: int
    """Parameters with the defaults, on a 1-channel input."""
    about: str
    """The first sentence of the model's docstring."""


CATALOGUE: tuple[ModelEntry, ...] = (
    ModelEntry("encoder_unet", None, 5, 3546097,
               "U-Net on an ImageNet-style encoder (efficientnet_lite0/1/2, resnet18/34), for photos; with "
               "model.pretrained its encoder starts from ImageNet weights"),
    ModelEntry("unet", 32, 4, 7762465, "Configurable U-Net; base 64, depth 4 is the classic 31M-parameter model"),
    ModelEntry("unet_base", 32, 4, 7762465, "U-Net base 32 (the same as unet): the default teacher"),
    ModelEntry("unet_keras", 64, 4, 31056963, "The original Keras tool's U-Net (base 64: about 31M parameters)"),
    ModelEntry("unet_large", 64, 4, 31036481, "U-Net base 64: the classic 31M-parameter U-Net, for a GPU"),
    ModelEntry("unet_nano", 4, 4, 122021, "U-Net base 4: the smallest student, for CPUs and small devices"),
    ModelEntry("unet_small", 16, 4, 1942289, "U-Net base 16: a teacher on a CPU, or a large student"),
    ModelEntry("unet_tiny", 8, 4, 486409, "U-Net base 8: a small student, or a teacher for tiny data"),
)
