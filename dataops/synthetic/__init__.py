"""Procedural photographs of people: the project's embedded default dataset, generated here, never downloaded.

Each image shows a few (by default 1-4) articulated people (a 3D kinematic skeleton with human proportions
and joint limits, standing, walking, sitting, crouching, lying, arms raised or mixed; seen from the front, side
or back), dressed and shaded, on rooms, streets, fields or textures with clutter (limb-like distractors included),
occluding each other and cut by the frame. The labels follow COCO (17 keypoints, v = 0/1/2, mask box, segment
area, RLE) and MPII (16 joints, 1-based, head boxes); a fake detector's boxes exercise detected-box evaluation.

    from dataops.synthetic import SyntheticConfig, generate, contact_sheet
    summary = generate(SyntheticConfig(seed=22), "data/synthetic")     # or: python -m dataops.synthetic --help

Modules: config (parameters), body (skeleton, poses), appearance (clothes), draw (primitives), person (painting
one person into image + owner/part map), background (scenes, clutter, occluders), scene (one image and its
labels; `sample_labels`: the labels of a scene without its pixels), detections (fake detector), writer (files,
workers, statistics), label_files (COCO-sized annotation and detection files of label-only scenes),
contact_sheet (labelled grid), sampling (fast weighted picks). Nothing here imports torch (`transpose` is
imported lazily), so the render workers stay light.
"""

from dataops.synthetic.config import SyntheticConfig
from dataops.synthetic.contact_sheet import contact_sheet
from dataops.synthetic.scene import Sample, render_sample, sample_labels
from dataops.synthetic.writer import dataset_sources, generate

__all__ = [
    "Sample",
    "SyntheticConfig",
    "contact_sheet",
    "dataset_sources",
    "generate",
    "render_sample",
    "sample_labels",
]
