"""Top-down pose estimation on image files, as the reference evaluates (the library behind `transpose predict`).

Iterate the inputs (one image or every .jpg/.jpeg/.png of a directory), crop every person box (from a COCO
detections file, or the whole image), run the model on batches that span images (flip test, DARK decoding),
rescore and OKS-NMS as the reference, and write in the output directory:

    results.json                    COCO keypoint results [{image_id, category_id: 1, keypoints: [x, y, s]*K, score}]
    images.json                     the images read: [{id, file_name, width, height, people}]
    <stem>_pose.jpg                 each image with the kept people's skeletons
    <stem>_person<i>_explain.png    with explain: person i's dependency areas per encoder layer

Modules: `inputs` (files, ids, boxes), `batching` (crops across images through the model), `people`
(rescoring and OKS-NMS), `drawing`, `predictor` (the loop and the results file).
"""

from transpose.predict.batching import CropJob, iter_predictions
from transpose.predict.drawing import draw_people, explain_person
from transpose.predict.inputs import (
    WHOLE_IMAGE_NOTE,
    ImageInput,
    PredictInputError,
    annotation_ids,
    assign_image_ids,
    image_inputs,
    list_images,
    load_detections,
)
from transpose.predict.people import Person, keep_people
from transpose.predict.predictor import PredictOptions, PredictReport, predict_images, summary, write_results

__all__ = [
    "WHOLE_IMAGE_NOTE",
    "CropJob",
    "ImageInput",
    "Person",
    "PredictInputError",
    "PredictOptions",
    "PredictReport",
    "annotation_ids",
    "assign_image_ids",
    "draw_people",
    "explain_person",
    "image_inputs",
    "iter_predictions",
    "keep_people",
    "list_images",
    "load_detections",
    "predict_images",
    "summary",
    "write_results",
]
