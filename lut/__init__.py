"""The 3D-LUT baseline stage: the image-adaptive LUT (`model`) and its training (`train`).

    accelerate launch lut/train.py --config configs/demo.yaml
"""

from lut.model import AdaptiveLUT, LUTPipeline, apply_lut, identity_lut, load_lut_pipeline

__all__ = ["AdaptiveLUT", "LUTPipeline", "apply_lut", "identity_lut", "load_lut_pipeline"]
