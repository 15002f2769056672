"""An MLServer runtime that runs an ONNX model with ONNX Runtime (MLServer ships none).

Used by bench_serving.py as ``"implementation": "mlserver_runtime.OnnxRuntime"`` in a
model-settings.json whose ``parameters.uri`` points at the model file. It runs inside MLServer's
own venv (bench/.venvs/mlserver), so it imports nothing from headrace. The session is configured
as headrace's is: one intra-op and one inter-op thread, all graph optimisations.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input_name = self._session.get_inputs()[0].name
        self._output_name = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        (y,) = self._session.run([self._output_name], {self._input_name: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output_name, y)],
        )
