"""Exports of trained models: ONNX with its self-check against PyTorch (`transpose.export.onnx`) and a
torch-free runtime for the file (`transpose.export.onnx_runtime`)."""
