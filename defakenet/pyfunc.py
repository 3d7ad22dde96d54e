"""defakenet as an MLflow pyfunc model, logged by path (MLflow's models-from-code): nothing is pickled.

MLflow runs this file when the model loads (`mlflow.pyfunc.load_model`, `mlflow models serve`); it is not imported
by defakenet itself. The weights, config and metadata are the defakenet model directory in the artifact
`model_dir`, read by `artifact.load_model` and scored by `inference.Predictor`, as everywhere else.

Input: float32 array (N, 3, S, S), RGB already resized, centre-cropped and normalised as the model metadata's
`preprocessing` says (S = its input_size); for a model with `data.faces: crop` each row is one face crop.
Output: float32 array (N,) of p(fake) = sigmoid(logit).
"""

import mlflow
import numpy as np


class DeFakeNetPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from defakenet.inference import Predictor

        self.predictor = Predictor.from_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        if isinstance(model_input, dict):  # {"inputs": ...} style callers that name the tensor
            (model_input,) = model_input.values()
        x = np.ascontiguousarray(np.asarray(model_input, dtype=np.float32))
        return self.predictor.score_inputs(x).astype(np.float32)


mlflow.models.set_model(DeFakeNetPyfunc())
