"""What the gateway may import in its slim image: nothing the image does not install (its layer,
no training code, is tests/test_layering.py's)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"
# Import name -> the requirement line that provides it in the gateway image.
PROVIDED_BY = {
    "fastapi": "fastapi",
    "fastapi_offline": "fastapi-offline",
    "starlette": "fastapi",
    "pydantic": "fastapi",
    "pydantic_settings": "pydantic-settings",
    "uvicorn": "uvicorn",
    "grpc": "grpcio",
    "numpy": "numpy",
    "PIL": "pillow",
    "httpx": "httpx",
    "prometheus_client": "prometheus-client",
    "pyobscenity": "pyobscenity",
    "google": "protobuf",
    "asgi_correlation_id": "asgi-correlation-id",
    "limits": "limits",
    "platformdirs": "platformdirs",
    "boto3": "boto3",
    "botocore": "boto3",
    "opentelemetry": "opentelemetry-sdk",
    # Generated protos only, copied in by docker/slim_serving_protos.py.
    "tensorflow": None,
    "tensorflow_serving": None,
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def gateway_modules():
    return sorted(GATEWAY.rglob("*.py"))


def test_the_grpc_gateway_imports_only_what_its_image_installs():
    requirements = {
        line.split(">=")[0].split("==")[0].strip().lower()
        for line in (ROOT / "docker" / "gateway-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in gateway_modules():
        if path.name == "inprocess.py":  # the in-process backend runs where TensorFlow is installed
            continue
        for name in imports(path) - set(sys.stdlib_module_names) - {"gateway", "memefly", "__future__"}:
            assert name in PROVIDED_BY, f"{path.relative_to(ROOT)} imports {name}: add it to the gateway image"
            if PROVIDED_BY[name]:
                assert PROVIDED_BY[name] in requirements, (
                    f"{name} needs {PROVIDED_BY[name]} in gateway-requirements.txt"
                )


def test_tensorflow_itself_is_only_used_by_the_inprocess_backend():
    for path in gateway_modules():
        tree = ast.parse(path.read_text())
        uses_tf = any(
            isinstance(n, ast.Import) and any(a.name == "tensorflow" for a in n.names) for n in ast.walk(tree)
        )
        assert not uses_tf or path.name == "inprocess.py", f"{path.relative_to(ROOT)} imports TensorFlow itself"
