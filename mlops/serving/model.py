"""The registered model as MLflow serves it: images in, people's keypoints out, by `transpose predict`'s protocol.

    mlflow models serve -m models:/transpose-coco@champion --env-manager local --port 5001
    printf '{"dataframe_records": [{"image": "%s", "boxes": [[280, 44, 218, 346]]}]}' "$(base64 -w0 photo.jpg)" |
        curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' --data-binary @-

Send rows as `dataframe_records` (`inputs` works too, but then MLflow repeats the whole request, images and
all, in its error messages).

Each image's person boxes are cropped at the model's input size, run with the flip test, decoded with DARK,
rescored and OKS-NMSed (`transpose.predict`), so the numbers equal those of `transpose predict`. The answer
per image: `{"people": [{"keypoints": [[x, y, score] x K], "score", "box", "box_score"}], "keypoint_names",
"width", "height"}`, people best first. The device follows MLflow's switch: `model_config={"device": ...}`,
else MLFLOW_DEFAULT_PREDICTION_DEVICE, else CUDA when visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mlops.serving.requests import MAX_IMAGE_PIXELS, PoseRequest, RequestError, parse_rows

WEIGHTS, CARD = "weights", "card"  # the artifact keys: best.pth and model.json


class PoseServingModel(mlflow.pyfunc.PythonModel):
    """A TransPose model from its best.pth and model card, answering image requests."""

    def load_context(self, context) -> None:
        import torch

        from transpose.models import ModelCard, load_trained

        config = dict(context.model_config or {})
        card = ModelCard.read(context.artifacts[CARD])
        model, self.card = load_trained(context.artifacts[WEIGHTS], card)
        self.device = torch.device(serving_device(config.get("device")))
        self.model = model.to(self.device).eval()
        self.max_pixels = int(config.get("max_image_pixels", MAX_IMAGE_PIXELS))
        self.batch_size = int(config.get("batch_size", 32))

    def predict(self, context, model_input, params: dict | None = None) -> list[dict]:
        try:
            requests = parse_rows(_rows(model_input), self.max_pixels)
        except RequestError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        flip = bool((params or {}).get("flip", True))
        return pose_requests(self.model, self.card.keypoints, requests, flip, self.batch_size)


def pose_requests(model, keypoint_set, requests: list[PoseRequest], flip: bool, batch_size: int) -> list[dict]:
    """The people of every request image, as `transpose predict` finds them (batched across images)."""
    import torch

    from transpose.predict import ImageInput, iter_predictions, keep_people

    sources = [
        ImageInput(Path(f"request-{r.index}"), r.index, r.boxes, r.box_scores) for r in requests
    ]  # no boxes: the whole image, as predict without --boxes
    images = {r.index: r.image for r in requests}
    answers = {}
    with torch.inference_mode():
        for job, keypoints, maxvals in iter_predictions(
            model, keypoint_set, sources, batch_size, flip, load=lambda source: images[source.image_id]
        ):
            people = keep_people(job, keypoints, maxvals, keypoint_set)
            height, width = job.image.shape[:2]
            answers[job.source.image_id] = {
                "people": [_person(p) for p in people],
                "keypoint_names": list(keypoint_set.names),
                "width": width,
                "height": height,
            }
    return [answers[r.index] for r in requests]


def _person(person) -> dict:
    keypoints = np.column_stack([person.keypoints, person.maxvals]).astype(float)
    return {
        "keypoints": keypoints.tolist(),
        "score": float(person.score),
        "box": [float(v) for v in person.box],
        "box_score": float(person.box_score),
    }


def serving_device(requested: str | None = None) -> str:
    """MLflow's device switch for PyTorch models: the model config, else MLFLOW_DEFAULT_PREDICTION_DEVICE, else
    CUDA when visible, else CPU."""
    import torch

    device = requested or os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE")
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _rows(model_input) -> list[dict]:
    """Request rows from what MLflow hands over: a DataFrame, a list of dicts, or one dict."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        return [model_input]
    if isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input):
        return model_input
    raise RequestError(f"expected rows with an 'image' field, got {type(model_input).__name__}")
