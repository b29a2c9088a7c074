"""A PredictionService for benchmarks/ceiling.py: the decoder step answers at once with recorded
outputs (sliced to each call's rows, tiled past the recording); every other call is passed on
to a real model server (the loopback stand-in), so the gateway starts and encodes as usual.

    python benchmarks/_instant_serving.py --upstream HOST:PORT --recorded STEP.npz [--port N]

Prints "listening on HOST:PORT" once it serves.
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from gateway.backends.tensors import to_proto  # noqa: E402
from memefly import contract as c  # noqa: E402

OPTIONS = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class InstantStep(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, upstream: str, recorded: dict[str, np.ndarray]):
        self.upstream = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(upstream, options=OPTIONS)
        )
        self.recorded = recorded

    def Predict(self, request, context):  # the proto's name
        spec = request.model_spec
        if spec.name != c.DECODER_MODEL or (spec.signature_name or "serving_default") != c.STEP_SIGNATURE:
            return self.upstream.Predict(request, timeout=30)
        rows = request.inputs[c.TOKEN].tensor_shape.dim[0].size
        take = np.arange(rows) % len(self.recorded[c.STATE])
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(spec)
        for name, value in self.recorded.items():
            response.outputs[name].CopyFrom(to_proto(value[take]))
        return response


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--recorded", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with np.load(args.recorded) as data:
        recorded = {name: data[name] for name in data.files}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(InstantStep(args.upstream, recorded), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
