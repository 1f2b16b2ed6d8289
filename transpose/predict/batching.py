"""Batching person crops across images through the model (flip test), and decoding them (DARK, back to the
image) as each image completes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from transpose.codec import HeatmapCodec
from transpose.crops import person_crops, read_image_rgb
from transpose.inference import crop_heatmaps
from transpose.keypoints import KeypointSet
from transpose.predict.inputs import ImageInput


@dataclass
class CropJob:
    """One decoded image waiting for the heatmaps of its person crops."""

    source: ImageInput
    image: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    crops: np.ndarray
    sent: int = 0  # crops handed to a batch so far
    heatmaps: list[np.ndarray] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return len(self.crops) - self.sent

    @property
    def done(self) -> bool:
        return sum(len(h) for h in self.heatmaps) == len(self.crops)


def make_job(source: ImageInput, image: np.ndarray, image_size: tuple[int, int]) -> CropJob:
    if source.boxes is None:
        boxes, scores = np.array([[0.0, 0.0, image.shape[1], image.shape[0]]]), np.ones(1)
    else:
        boxes, scores = source.boxes, source.box_scores
    centers, scales, crops = person_crops(image, boxes, image_size)
    return CropJob(source, image, np.asarray(boxes, np.float64), np.asarray(scores, np.float64), centers, scales, crops)


def run_batch(model, pending: Iterable[CropJob], batch_size: int, keypoint_set: KeypointSet, flip: bool) -> None:
    """Send the next `batch_size` waiting crops (spanning images, in order) through the model."""
    parts: list[tuple[CropJob, int]] = []
    room = batch_size
    for job in pending:
        take = min(room, job.waiting)
        if take:
            parts.append((job, take))
            room -= take
        if not room:
            break
    crops = np.concatenate([job.crops[job.sent : job.sent + n] for job, n in parts])
    heatmaps = crop_heatmaps(model, crops, keypoint_set, flip)
    start = 0
    for job, n in parts:
        job.heatmaps.append(heatmaps[start : start + n])
        job.sent += n
        start += n


def iter_predictions(
    model,
    keypoint_set: KeypointSet,
    sources: list[ImageInput],
    batch_size: int = 32,
    flip: bool = True,
    skipped: list[tuple[str, str]] | None = None,
    load: Callable[[ImageInput], np.ndarray] | None = None,
) -> Iterator[tuple[CropJob, np.ndarray, np.ndarray]]:
    """(job, keypoints [M, K, 2], maxvals [M, K]) per readable image, in input order; crops batched across images.

    `keypoint_set` is the model's (its card); its flip pairs drive the flip test. `load` gives a source's RGB
    image (default: decode its file); a ValueError from it skips the image, appended to `skipped` as (file name,
    reason).
    """
    load = load or (lambda source: read_image_rgb(source.path))
    cfg = model.data_config
    codec = cfg.codec()
    pending: deque[CropJob] = deque()
    for i, source in enumerate(_progress(sources, "predict")):
        try:
            pending.append(make_job(source, load(source), cfg.image_size))
        except ValueError as err:
            if skipped is not None:
                skipped.append((source.path.name, str(err)))
        last = i == len(sources) - 1
        while sum(j.waiting for j in pending) >= (1 if last else batch_size):
            run_batch(model, pending, batch_size, keypoint_set, flip)
        while pending and pending[0].done:
            job = pending.popleft()
            yield job, *_decode(job, codec, cfg.num_keypoints)


def _decode(job: CropJob, codec: HeatmapCodec, num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """DARK-decoded keypoints [M, K, 2] in image coordinates and maxvals [M, K] of a finished job."""
    if not len(job.crops):
        return np.zeros((0, num_keypoints, 2), np.float32), np.zeros((0, num_keypoints), np.float32)
    return codec.decode(np.concatenate(job.heatmaps), job.centers, job.scales, dark=True)


def _progress(items: list, desc: str):
    """A tqdm bar over `items` when tqdm is installed, else the items themselves."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img", dynamic_ncols=True)
