"""Where COCO OKS AP is lost: per-keypoint hit rates, left/right swaps and OKS by person size.

AP says how good a model is; this says what to fix. Each annotated person (num_keypoints > 0, not crowd) is
paired with the result of its image that has the highest OKS against it (COCO's per-pair OKS: the annotation's
area, its labelled joints). A joint counts as found when its own similarity exp(-d^2 / (2 s^2 k^2)) exceeds
`threshold` (0.5 by default: the joint alone would pass AP50). A person counts as mirrored when swapping the
prediction's left and right joints raises its OKS by more than `swap_margin`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from transpose.evaluation.coco import CocoGroundTruth
from transpose.figures import pyplot, save_figure

SIZE_EDGES = (32.0, 64.0, 96.0, 128.0)  # sqrt(area) bin edges in pixels (COCO's medium/large split is at 96)


def joint_similarities(pred: np.ndarray, gt: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """Per-joint OKS terms [K] of pred [K, 2+] against gt [K, 2+] at the annotation's area."""
    d2 = ((pred[:, :2] - gt[:, :2]) ** 2).sum(axis=1)
    return np.exp(-d2 / (2.0 * max(area, np.spacing(1)) * (2.0 * sigmas) ** 2))


def keypoint_breakdown(
    gt: CocoGroundTruth, results: list[dict], threshold: float = 0.5, swap_margin: float = 0.05
) -> dict:
    """Per-joint hit rates, mirrored fraction and mean OKS by size of `results` against `gt` (see module doc)."""
    kset = gt.keypoint_set
    if kset.sigmas is None:
        raise ValueError(f"{gt.source}: the keypoint set {kset.name} has no OKS sigmas")
    sigmas = np.asarray(kset.sigmas, dtype=np.float64)
    flip = kset.flip_index()
    by_image: dict[int, list[np.ndarray]] = {}
    for res in results:
        by_image.setdefault(res["image_id"], []).append(np.asarray(res["keypoints"], dtype=np.float64).reshape(-1, 3))
    found = np.zeros(kset.num_keypoints)
    labelled = np.zeros(kset.num_keypoints)
    people: list[tuple[float, float]] = []  # (sqrt(area), OKS of the best result; 0 when the image has none)
    mirrored = unmatched = 0
    for ann in gt.coco.dataset["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) == 0:
            continue
        g = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        visible = g[:, 2] > 0
        area = float(ann["area"])
        candidates = by_image.get(ann["image_id"], [])
        terms = [joint_similarities(p, g, area, sigmas) for p in candidates]
        oks = [float(t[visible].mean()) for t in terms]
        labelled += visible
        if not candidates or max(oks) <= 0.0:
            unmatched += 1
            people.append((np.sqrt(area), 0.0))
            continue
        best = int(np.argmax(oks))
        found += (terms[best] > threshold) & visible
        people.append((np.sqrt(area), oks[best]))
        swapped = joint_similarities(candidates[best][flip], g, area, sigmas)[visible].mean()
        mirrored += bool(swapped > oks[best] + swap_margin)
    if not people:
        raise ValueError(f"{gt.source}: no annotated person (num_keypoints > 0, not crowd) to break down")
    sizes, scores = np.array(people).T
    edges = (0.0, *SIZE_EDGES, np.inf)
    by_size = []
    for lo, hi in itertools.pairwise(edges):
        inside = (sizes >= lo) & (sizes < hi)
        if inside.any():
            label = f"{lo:.0f}-{hi:.0f}" if np.isfinite(hi) else f">={lo:.0f}"
            by_size.append({"sqrt_area": label, "people": int(inside.sum()), "mean_oks": float(scores[inside].mean())})
    rates = np.divide(found, labelled, out=np.full_like(found, np.nan), where=labelled > 0)
    return {
        "people": len(people),
        "unmatched": unmatched,
        "mean_oks": float(scores.mean()),
        "mirrored": mirrored / len(people),
        "threshold": threshold,
        "joints": {name: (None if np.isnan(r) else float(r)) for name, r in zip(kset.names, rates)},
        "by_size": by_size,
    }


def format_breakdown(breakdown: dict) -> str:
    """A few lines for a terminal: the weakest joints first."""
    joints = sorted(((r, n) for n, r in breakdown["joints"].items() if r is not None))
    lines = [
        f"{breakdown['people']} people, mean OKS {breakdown['mean_oks']:.3f}, "
        f"mirrored {breakdown['mirrored']:.1%}, no prediction {breakdown['unmatched']}",
        f"joints found (own OKS > {breakdown['threshold']}), weakest first: "
        + ", ".join(f"{n} {r:.2f}" for r, n in joints),
        "mean OKS by sqrt(area): "
        + ", ".join(f"{b['sqrt_area']} px {b['mean_oks']:.3f} (n={b['people']})" for b in breakdown["by_size"]),
    ]
    return "\n".join(lines)


def plot_breakdown(breakdown: dict, out: Path, title: str = "") -> Path:
    """Bar chart of the per-joint hit rates beside mean OKS by person size."""
    plt = pyplot()

    names = [n for n, r in breakdown["joints"].items() if r is not None]
    rates = [breakdown["joints"][n] for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    left.barh(names[::-1], rates[::-1], color="tab:blue")
    left.set_xlim(0, 1)
    left.set_xlabel(f"share of labelled joints found (own OKS > {breakdown['threshold']})")
    left.set_title(f"mean OKS {breakdown['mean_oks']:.3f}, mirrored {breakdown['mirrored']:.1%}")
    bins = breakdown["by_size"]
    right.bar([b["sqrt_area"] for b in bins], [b["mean_oks"] for b in bins], color="tab:orange")
    for i, b in enumerate(bins):
        right.text(i, b["mean_oks"] + 0.02, f"n={b['people']}", ha="center", fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_xlabel("sqrt(area) in pixels")
    right.set_ylabel("mean OKS of the best prediction")
    fig.suptitle(title or f"Where the OKS is lost ({breakdown['people']} people)")
    return save_figure(fig, out)
