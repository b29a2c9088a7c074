"""The decoder's state and context on the wire as float16 (MEMEFLY_WIRE_STATE=float16): bytes and
gateway microseconds for one 1,024-row step, and whether the memes change.

    python benchmarks/wire_float16.py [--models-dir models] [--version N]

1. Wire: one real 1,024-row step of the exported decoder, through each signature (step and
   step_float16). The gateway encodes the request (tensor_content) and decodes the reply in
   both forms TF Serving can send: its default, values in the typed fields (float_val, and
   half_val for float16), and tensor_content. Microseconds are the median of 50.
2. Memes: every template, with the default options (16 sampled candidates, seeded) and with
   5-beam search, through the gateway's in-process pipeline (MemePipeline) once per wire
   dtype: the share of templates whose five memes are the same, in the same order.

Needs models exported with the step_float16 signature (memefly export, or a first start, of
this version or later).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memefly import contract as c  # noqa: E402
from memefly import paths  # noqa: E402

ROWS = 1024


def _as_proto_field(value: np.ndarray):
    """A reply tensor as TF Serving encodes it by default (Tensor::AsProtoField)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    dtype, field = {
        np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
        np.dtype(np.float16): (types_pb2.DT_HALF, "half_val"),
        np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    }[value.dtype]
    proto = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in value.shape]
        ),
    )
    getattr(proto, field).extend((value.view(np.uint16) if field == "half_val" else value).ravel().tolist())
    return proto


def _median_us(work, repeats: int = 50) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def wire(models_dir: Path, version: int) -> list[dict]:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from gateway.backends.tensors import from_proto, to_proto

    signatures = tf.saved_model.load(str(models_dir / c.DECODER_MODEL / str(version))).signatures
    num_templates = signatures[c.INIT_SIGNATURE].structured_input_signature[1][c.TEMPLATE_PROBS].shape[1]
    probs = np.eye(num_templates, dtype=np.float32)[np.arange(ROWS) % num_templates]
    init = signatures[c.INIT_SIGNATURE](template_probs=tf.constant(probs))
    rows = []
    for name, dtype in ((c.STEP_SIGNATURE, np.float32), (c.STEP_FLOAT16_SIGNATURE, np.float16)):
        inputs = {
            c.TOKEN: np.full(ROWS, c.START_ID, np.int32),
            c.STATE: init[c.STATE].numpy().astype(dtype),
            c.CONTEXT: init[c.CONTEXT].numpy().astype(dtype),
        }
        outputs = {k: v.numpy() for k, v in signatures[name](**{k: tf.constant(v) for k, v in inputs.items()}).items()}

        def encode(inputs: dict = inputs) -> bytes:
            request = predict_pb2.PredictRequest()
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(to_proto(value))
            return request.SerializeToString()

        row = {"signature": name, "request_bytes": len(encode()), "encode_us": _median_us(encode)}
        for form, make in (("fields", _as_proto_field), ("tensor_content", to_proto)):
            reply = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                reply.outputs[key].CopyFrom(make(value))
            data = reply.SerializeToString()

            def decode(data=data) -> dict:
                response = predict_pb2.PredictResponse.FromString(data)
                return {key: from_proto(proto) for key, proto in response.outputs.items()}

            assert all(np.array_equal(decode()[k], v) for k, v in outputs.items())
            row[f"reply_bytes_{form}"] = len(data)
            row[f"decode_us_{form}"] = _median_us(decode)
        rows.append(row)
    return rows


async def memes(models_dir: Path, version: int) -> dict:
    from gateway.pipeline import MemePipeline
    from memefly.decoding.options import DecodingOptions

    answers: dict[tuple[str, str], list] = {}
    for wire_state in ("float32", "float16"):
        async with MemePipeline(models_dir=models_dir, model_version=version, wire_state=wire_state) as client:
            names = client.template_names
            for label, options in (("default", DecodingOptions()), ("5 beams", DecodingOptions(num_beams=5))):
                results = await client.generate(names, options)
                answers[(label, wire_state)] = [[tuple(m.boxes) for m in r.response.memes] for r in results]
    out = {}
    for label in ("default", "5 beams"):
        wide, half = answers[(label, "float32")], answers[(label, "float16")]
        same_templates = sum(a == b for a, b in zip(wide, half, strict=True))
        same_memes = sum(x == y for a, b in zip(wide, half, strict=True) for x, y in zip(a, b, strict=False))
        out[label] = {
            "templates": len(wide),
            "same_templates": same_templates,
            "memes": sum(len(a) for a in wide),
            "same_memes": same_memes,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=paths.models_dir())
    parser.add_argument("--version", type=int, help="default: the newest pair")
    args = parser.parse_args()
    version = args.version or max(paths.exported_pairs(args.models_dir))

    print(f"One {ROWS:,}-row step of {args.models_dir}/{c.DECODER_MODEL}/{version}, gateway side (median of 50):\n")
    print(
        "| signature | request | encode | reply, TF Serving's default fields | decode "
        "| reply as tensor_content | decode |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in wire(args.models_dir, version):
        print(
            f"| {r['signature']} | {r['request_bytes']:,} B | {r['encode_us']:.0f} us | {r['reply_bytes_fields']:,} B "
            f"| {r['decode_us_fields']:.0f} us | {r['reply_bytes_tensor_content']:,} B "
            f"| {r['decode_us_tensor_content']:.0f} us |"
        )
    print("\nThe five memes of every template, float16 wire against float32 (in-process, seeded):\n")
    print("| options | templates with the same five memes | memes the same |")
    print("|---|---|---|")
    for label, r in asyncio.run(memes(args.models_dir, version)).items():
        print(f"| {label} | {r['same_templates']} of {r['templates']} | {r['same_memes']} of {r['memes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
