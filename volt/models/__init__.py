"""Models: the Volt backbone, the SpUNet teacher, their building blocks and reference-checkpoint conversion.

`BACKBONES` maps a config name to a backbone class; `PRESETS` / `build_volt` give the named sizes.
"""

from volt.models.convert import convert_reference_state_dict, load_strict, volt_from_reference_config
from volt.models.distill import FrozenTeacher
from volt.models.heads import ConditionHeads
from volt.models.losses import Criteria
from volt.models.segmentor import Segmentor, SegmentorOutput
from volt.models.sparse_unet import SparseUNet
from volt.models.volt import PRESETS, VolumeTransformer, build_volt

BACKBONES = {"volt": VolumeTransformer, "spunet": SparseUNet}

__all__ = [
    "BACKBONES",
    "PRESETS",
    "ConditionHeads",
    "Criteria",
    "FrozenTeacher",
    "Segmentor",
    "SegmentorOutput",
    "SparseUNet",
    "VolumeTransformer",
    "build_volt",
    "convert_reference_state_dict",
    "load_strict",
    "volt_from_reference_config",
]
