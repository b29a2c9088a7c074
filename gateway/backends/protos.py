"""The TF Serving protos the gRPC path speaks: tensorflow-serving-api's own modules where that
package is installed (with TensorFlow: `memefly[train]`, the export image; or the gateway
image's extracted copy), else the copy vendored in gateway/backends/serving_protos
(`memefly[serve]`, no TensorFlow). Never both in one process: they register the same proto
files."""

from __future__ import annotations

try:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
except ImportError:
    from gateway.backends.serving_protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from gateway.backends.serving_protos.tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

__all__ = [
    "get_model_status_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_service_pb2_grpc",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]
