"""Models: declarative networks with inferred shapes, and pretrained backbones.

layers.py     the layer vocabulary (`LAYERS`), each registered by name
network.py    a layer list -> a checked `Network` (with a trunk and a head)
zoo.py        named architectures (`ARCHITECTURES`), architecture files, transfer networks
backbones.py  pretrained ImageNet backbones (`BACKBONES`) and their strict weight loading
"""

from pawlab.models.backbones import BACKBONES
from pawlab.models.layers import LAYERS
from pawlab.models.network import (
    LayerSpec,
    Network,
    build,
    frozen_trunk,
    input_shape,
    validate_spec,
    with_input_size,
)
from pawlab.models.zoo import (
    ARCHITECTURES,
    get_architecture,
    load_arch_file,
    preprocessing_for,
    transfer_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "LAYERS",
    "LayerSpec",
    "Network",
    "build",
    "frozen_trunk",
    "get_architecture",
    "input_shape",
    "load_arch_file",
    "preprocessing_for",
    "transfer_architecture",
    "validate_spec",
    "with_input_size",
]
