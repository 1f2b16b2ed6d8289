"""Serving the registered model: `requests` (base64 images and boxes, checked), `model` (the MLflow pyfunc
model answering them by `transpose predict`'s protocol), `packaging` (logging a run as one model with the
pyfunc and pytorch flavours). Import the modules themselves; this package imports nothing, so that the code
bundled with a model stays its import closure."""
