"""Export to ONNX (the mamba domain ops and their schemas)."""
