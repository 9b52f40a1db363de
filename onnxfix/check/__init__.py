"""The parity check: runs the original and the rewrite in onnxruntime and compares."""
