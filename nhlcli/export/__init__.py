"""Deployment formats: ONNX export with a parity check, and the ONNX file's profile."""

from nhlcli.export.onnx import export_onnx, has_onnxruntime, parity, profile_onnx, read_onnx_metadata

__all__ = ["export_onnx", "has_onnxruntime", "parity", "profile_onnx", "read_onnx_metadata"]
