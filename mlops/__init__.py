"""Operations around the models: MLflow tracking of every stage (`tracking`), the model registry and its
promotion rules (`registry`), fingerprints of data, code and environment (`fingerprints`), and Ray Tune
sweeps over the training stages (`tuning`)."""
