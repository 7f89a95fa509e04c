"""The 3D-LUT baseline stage: the image-adaptive LUT (`model`) and its training (`train`).

    accelerate launch lut/train.py --config configs/demo.yaml

Other stages open its model folder with `core.models.load_model`; `.pipeline()` of the loaded
LUT is its own full-resolution path (every original pixel through the look-up).
"""

from lut.model import AdaptiveLUT, LUTPipeline, apply_lut, identity_lut

__all__ = ["AdaptiveLUT", "LUTPipeline", "apply_lut", "identity_lut"]
