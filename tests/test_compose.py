"""docker-compose.yml, its CPU override and the gateway's Dockerfile, checked without Docker.

The files are read as Compose reads them (YAML, `${VAR:-default}` interpolation, the
`!reset` tag, the override merge rules these files use); every path a service mounts or
names on its command line must exist in the repository.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from memefly import contract

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"encoder": contract.ENCODER_MODEL, "decoder": contract.DECODER_MODEL}
VARIANTS = ("gpu", "cpu")

# Every flag tensorflow_model_server defines (tensorflow_serving/model_servers/main.cc in
# the tensorflow/serving repository); an unknown flag makes the server print usage and exit.
TF_SERVING_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads",
    "rest_api_timeout_in_ms", "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path",
    "num_load_threads", "num_unload_threads", "max_num_load_retries",
    "load_retry_interval_micros", "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
    "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "version",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "enable_signature_method_name_check", "xla_cpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file",
}  # fmt: skip


# --- reading Compose files -------------------------------------------------------------

RESET = object()  # the `!reset` tag: remove the attribute from the merged model


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)


def load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def merge(base, override):
    """Compose's merge, as far as these files need it: mappings merge key by key,
    `!reset` removes, anything else (image, command) replaces."""
    out = dict(base)
    for key, value in override.items():
        if value is RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def compose(variant: str) -> dict:
    base = load("docker-compose.yml")
    return merge(base, load("docker-compose.cpu.yml")) if variant == "cpu" else base


def interpolate(value: str) -> str:
    """`${VAR:-default}` -> default: what Compose does with the variable unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each short-syntax volume."""
    out = []
    for spec in service.get("volumes", []):
        source, target, *mode = interpolate(spec).split(":")
        out.append((source, target, mode == ["ro"]))
    return out


def flags(service: dict) -> dict[str, str]:
    parsed = {}
    for arg in service["command"]:
        assert arg.startswith("--"), arg
        name, _, value = arg[2:].partition("=")
        parsed[name] = value
    return parsed


def host_path(service: dict, container_path: str) -> Path:
    """The repository file a container path of `service` comes from, through its mounts."""
    path = PurePosixPath(container_path)
    for source, target, _ in mounts(service):
        if path.is_relative_to(target):
            return ROOT / source / path.relative_to(target)
    raise AssertionError(f"{container_path} is not under any mount")


def image_version(image: str) -> tuple[int, ...]:
    match = re.fullmatch(r"tensorflow/serving:(\d+)\.(\d+)\.(\d+)(-gpu)?", image)
    assert match, f"{image}: pin an exact tensorflow/serving release, not latest"
    return tuple(int(g) for g in match.groups()[:3])


# --- the tests -------------------------------------------------------------------------


def test_services():
    assert set(load("docker-compose.yml")["services"]) == {"encoder", "decoder", "gateway", "export"}
    # The override only swaps images, commands and the GPU reservation (so `merge` above is
    # all the merging these files need).
    for name, service in load("docker-compose.cpu.yml")["services"].items():
        assert name in SERVERS and set(service) <= {"image", "command", "deploy"}


@pytest.mark.parametrize("server", SERVERS)
def test_images_are_pinned_and_match_the_exporting_tensorflow(server):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("tensorflow==")]
    tensorflow = tuple(int(x) for x in pin.split("==")[1].split("."))
    gpu, cpu = (compose(v)["services"][server]["image"] for v in VARIANTS)
    assert gpu.endswith("-gpu") and not cpu.endswith("-gpu")
    assert image_version(gpu) == image_version(cpu)
    assert image_version(gpu) >= max(tensorflow, (2, 21, 0))


@pytest.mark.parametrize("server", SERVERS)
def test_gpu_reservation_only_in_the_gpu_variant(server):
    devices = compose("gpu")["services"][server]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    cpu = compose("cpu")["services"][server]
    assert "deploy" not in cpu
    assert not any("gpu" in arg for arg in cpu["command"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("server", SERVERS)
def test_model_server_command(server, variant):
    service = compose(variant)["services"][server]
    assert service["entrypoint"] == ["tensorflow_model_server"]
    args = flags(service)
    assert set(args) <= TF_SERVING_FLAGS, set(args) - TF_SERVING_FLAGS
    assert int(args["port"]) == contract.GRPC_PORT
    assert int(args["rest_api_port"]) == contract.REST_PORT
    assert args["enable_batching"] == "true"
    assert args["enable_model_warmup"] == "true"
    # Every file named on the command line exists in the repository, via the mounts.
    files = {name: host_path(service, value) for name, value in args.items() if value.startswith("/")}
    assert set(files) == {"model_config_file", "batching_parameters_file", "monitoring_config_file"}
    for path in files.values():
        assert path.is_file(), path
    assert files["model_config_file"] == ROOT / f"{server}_service" / "models.config"
    assert files["batching_parameters_file"] == ROOT / f"{server}_service" / f"batching_{variant}.txt"
    # The models.config base path lies in the read-only models mount.
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(files["model_config_file"].read_text(), config)
    (model,) = config.model_config_list.config
    assert host_path(service, model.base_path) == ROOT / "models" / SERVERS[server]
    # gRPC message limits: name=int pairs, at least gRPC's 4 MiB default.
    for argument in args["grpc_channel_arguments"].split(","):
        key, value = argument.split("=")
        assert key in {"grpc.max_receive_message_length", "grpc.max_send_message_length"}
        assert int(value) >= 4 * 2**20


def test_models_are_read_only_except_for_export():
    services = compose("gpu")["services"]
    for name, service in services.items():
        model_mounts = [(target, ro) for source, target, ro in mounts(service) if source == "./models"]
        if name in SERVERS:
            assert model_mounts == [("/models", True)]
            configs = [(s, ro) for s, t, ro in mounts(service) if t == "/config"]
            assert configs == [(f"./{name}_service", True)]
        elif name == "export":
            assert model_mounts == [("/models", False)]
        else:
            assert model_mounts == []
    for source, _, read_only in mounts(services["export"]):
        if source != "./models" and source.startswith("."):
            assert read_only, f"export only writes models, not {source}"


def test_ports():
    services = compose("gpu")["services"]
    assert services["gateway"]["ports"] == ["8000:8000"]
    for server in SERVERS:
        published = [p.split(":") for p in services[server]["ports"]]
        # Model servers are for the gateway: on the host, loopback only.
        assert all(host == "127.0.0.1" for host, _, _ in published)
        assert {int(inside) for _, _, inside in published} == {contract.GRPC_PORT, contract.REST_PORT}


@pytest.mark.parametrize("server", SERVERS)
def test_model_server_health_check(server):
    check = compose("gpu")["services"][server]["healthcheck"]
    kind, program, *script = check["test"]
    # The tensorflow/serving image has bash but neither curl nor wget.
    assert (kind, program) == ("CMD", "bash")
    script = " ".join(script)
    assert f"/dev/tcp/127.0.0.1/{contract.REST_PORT}" in script
    assert f"GET /v1/models/{SERVERS[server]} HTTP/1.0" in script
    assert "AVAILABLE" in script
    assert "curl" not in script and "wget" not in script
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def test_gateway():
    gateway = compose("gpu")["services"]["gateway"]
    assert gateway["build"] == "."
    assert gateway["depends_on"] == {
        "encoder": {"condition": "service_healthy"},
        "decoder": {"condition": "service_healthy"},
    }
    env = gateway["environment"]
    assert env["MEMEFLY_BACKEND"] == "grpc"
    assert env["MEMEFLY_ENCODER_TARGET"] == f"encoder:{contract.GRPC_PORT}"
    assert env["MEMEFLY_DECODER_TARGET"] == f"decoder:{contract.GRPC_PORT}"
    assert env["MEMEFLY_MODEL_VERSION"] == "${MEMEFLY_MODEL_VERSION:-1}"
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    # Template images to draw on: where `memefly data download` writes, read-only.
    templates = [(source, ro) for source, target, ro in mounts(gateway) if target == env["MEMEFLY_TEMPLATES_DIR"]]
    assert templates == [("./data/templates", True)]


def test_export_profile():
    services = compose("gpu")["services"]
    export = services["export"]
    assert export["profiles"] == ["export"]
    # Built from the same Dockerfile as the gateway, but its full target (with TensorFlow).
    assert export["build"] == {"context": services["gateway"]["build"], "target": "export"}
    assert export["image"] != services["gateway"]["image"]
    command = export["command"]
    assert command[:2] == ["memefly", "export"]
    options = dict(zip(command[2::2], command[3::2]))
    assert options["--models-dir"] == "/models"
    assert options["--version"] == "${MEMEFLY_MODEL_VERSION:-1}"
    assert options["--weights"] == "imagenet"
    targets = {target for _, target, _ in mounts(export)}
    for option in ("--run", "--templates-dir", "--models-dir"):
        assert any(PurePosixPath(options[option]).is_relative_to(t) for t in targets), option


def test_one_model_version_default_everywhere():
    lines = [line for name in ("docker-compose.yml", "docker-compose.cpu.yml")
             for line in (ROOT / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    uses = re.findall(r"\$\{MEMEFLY_MODEL_VERSION([^}]*)\}", "\n".join(lines))
    assert uses and set(uses) == {":-1"}


def test_dockerfile():
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert final_stage.startswith("python:3.11-slim")
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.MULTILINE)
    assert users and users[-1] not in {"root", "0", "0:0"}, "the gateway must not run as root"
    assert 'CMD ["memefly", "serve", "--host", "0.0.0.0", "--port", "8000"]' in final_stage
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", dockerfile, re.MULTILINE | re.DOTALL))
    assert {"protos", "export", "gateway-build", "gateway"} <= set(stages)
    # The gateway image stays small: no TensorFlow in what it installs, protos copied in.
    assert "--no-deps" in stages["gateway-build"] and "--from=protos" in stages["gateway-build"]
    assert "tensorflow" not in (ROOT / "docker" / "gateway-requirements.txt").read_text().split("#")[0].lower()
    requirements = [line for line in (ROOT / "docker" / "gateway-requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    assert not [r for r in requirements if r.lower().startswith("tensorflow")]
    assert "slim_serving_protos.py" in stages["protos"]
    # The meme font comes from its Debian package, at the path the renderer looks for.
    from gateway.rendering.fonts import DEBIAN_FONT, DEBIAN_PACKAGE
    assert f"apt-get install -y --no-install-recommends {DEBIAN_PACKAGE}" in stages["gateway"]
    assert DEBIAN_FONT.name == "RobotoCondensed-Bold.ttf" and DEBIAN_PACKAGE in (ROOT / ".ci" / "run").read_text()
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "data", "runs", "models"} <= ignored


@pytest.mark.parametrize("server", SERVERS)
def test_service_readme_shows_the_command(server):
    readme = (ROOT / f"{server}_service" / "README.md").read_text()
    for arg in compose("gpu")["services"][server]["command"]:
        assert arg in readme, f"{arg} missing from {server}_service/README.md"
