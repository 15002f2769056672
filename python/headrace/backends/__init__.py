"""Model backends: ONNX Runtime (default) and, later, native int8. One interface: Backend."""

from headrace.backends.base import Backend, TensorSpec

__all__ = ["Backend", "TensorSpec"]
