"""docker-compose.yml, its CPU override and the gateway's Dockerfile, checked without Docker.

The files are read as Compose reads them (YAML, `${VAR:-default}` interpolation, the
`!reset` tag, the override merge rules these files use); every path a service mounts or
names on its command line must exist in the repository.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tf_serving_flags import TF_SERVING_FLAGS, parse_flags

from memefly import contract
from memefly.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SERVERS = {"encoder": contract.ENCODER_MODEL, "decoder": contract.DECODER_MODEL}
VARIANTS = ("gpu", "cpu")


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
    return parse_flags(service["command"])


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
    assert set(load("docker-compose.replicas.yml")["services"]) == {"gateway", "proxy"}
    # The override only swaps images, commands and the GPU reservation (so `merge` above is
    # all the merging these files need).
    for name, service in load("docker-compose.cpu.yml")["services"].items():
        assert name in SERVERS and set(service) <= {"image", "command", "deploy"}


@pytest.mark.parametrize("server", SERVERS)
def test_images_are_pinned_to_a_serving_release_that_loads_our_models(server):
    """TF Serving's images lag TensorFlow's releases: an older server is pinned only with the
    check that it loads and runs what our TensorFlow exports (docs/deploy.md, "Image tag")."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["train"] if d.startswith("tensorflow==")]
    tensorflow = tuple(int(x) for x in pin.split("==")[1].split("."))
    gpu, cpu = (compose(v)["services"][server]["image"] for v in VARIANTS)
    assert gpu.endswith("-gpu") and not cpu.endswith("-gpu")
    assert image_version(gpu) == image_version(cpu)
    if image_version(gpu)[:2] < tensorflow[:2]:
        deploy = (ROOT / "docs" / "deploy.md").read_text()
        served = ".".join(map(str, image_version(gpu)))
        assert f"tensorflow/serving:{served}-gpu" in deploy and "docker/serving_compat.py" in deploy
        assert f"TensorFlow {served[:4]}" in deploy  # the result of the check, written down


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
    # Replies as bytes, strings included (gateway/backends/tensors.py reads that form).
    assert args["enable_serialization_as_tensor_content"] == "true"
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
    # The export writes the models and the template images it downloads, nothing else.
    written = {
        source for source, _, read_only in mounts(services["export"]) if source.startswith(".") and not read_only
    }
    assert written == {"./models", "./data/templates"}


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
    args = build_parser().parse_args([interpolate(a) for a in command[1:]])
    # From a fresh clone: the model shipped in the image, nothing from ./runs or ../shared.
    assert args.default_model and args.download_templates and args.weights == "imagenet"
    assert args.version == 1
    assert all(not source.startswith("..") and "runs" not in source for source, _, _ in mounts(export))
    # It writes where the servers read and where the gateway finds the templates.
    assert host_path(export, args.models_dir) == ROOT / "models"
    gateway = services["gateway"]
    assert host_path(export, args.templates_dir) == host_path(gateway, gateway["environment"]["MEMEFLY_TEMPLATES_DIR"])


def test_the_export_command_builds_what_compose_serves(tmp_path, monkeypatch):
    """The export service's command, run with its mounts mapped into a fresh-clone layout:
    it downloads the template images into data/templates and exports the shipped model into
    models/, where the servers' model configs and the gateway look (the export itself, the
    slow part, is recorded instead of run: tests/test_export.py covers it)."""
    import hashlib
    import http.server
    import threading
    from functools import partial

    from memefly import paths
    from memefly.cli import main
    from model_export import download
    from model_export import export as export_module

    # Stand-ins for the template images (any bytes: the download checks them against a record).
    names = [t["name"] for t in json.loads((paths.shipped_model() / "templates.json").read_text())]
    images = tmp_path / "upstream"
    images.mkdir()
    records = []
    for name in names:
        data = hashlib.sha256(name.encode()).digest() * 8
        (images / f"{name}.jpg").write_bytes(data)
        records.append({"file": f"{name}.jpg", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    (tmp_path / "manifest.json").write_text(json.dumps({"files": records}))
    monkeypatch.setattr(download, "MANIFEST", tmp_path / "manifest.json")
    clone = tmp_path / "clone"
    (clone / "models").mkdir(parents=True)
    (clone / "data" / "templates").mkdir(parents=True)  # as docs/deploy.md says to make them
    services = compose("gpu")["services"]
    export = services["export"]

    def on_host(value: str) -> str:
        path = PurePosixPath(value)
        for source, target, _ in mounts(export):
            if source.startswith(".") and path.is_relative_to(target):
                return str(clone / source / path.relative_to(target))
        return value

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(images))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MEMEFLY_TEMPLATES_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    recorded = []
    monkeypatch.setattr(export_module, "export", lambda config: recorded.append(config) or {"log": "-"})
    try:
        assert main([on_host(interpolate(a)) for a in export["command"][1:]]) == 0
    finally:
        server.shutdown()
        server.server_close()
    (config,) = recorded
    assert config.run == paths.shipped_model()
    downloaded = clone / "data" / "templates"
    assert {p.name for p in downloaded.iterdir()} == {f"{name}.jpg" for name in names}
    assert all((downloaded / f"{n}.jpg").read_bytes() == (images / f"{n}.jpg").read_bytes() for n in names)
    assert Path(config.templates_dir) == downloaded
    # Both servers load <base_path>/<version>, which is <models_dir>/<model>/<version>.
    for server_name, model in SERVERS.items():
        service = services[server_name]
        model_config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(host_path(service, flags(service)["model_config_file"]).read_text(), model_config)
        (entry,) = model_config.model_config_list.config
        assert host_path(service, entry.base_path) == ROOT / "models" / model
        assert Path(config.models_dir) / model == clone / "models" / model


def test_one_model_version_default_everywhere():
    lines = [
        line
        for name in ("docker-compose.yml", "docker-compose.cpu.yml")
        for line in (ROOT / name).read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
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
    requirements = [
        line
        for line in (ROOT / "docker" / "gateway-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert not [r for r in requirements if r.lower().startswith("tensorflow")]
    assert "slim_serving_protos.py" in stages["protos"]
    # The search's compiled kernels are built into the image, in the cache the gateway reads,
    # for the CPU the gateway asks for (numba keys its cache by CPU: generic, any x86-64 host).
    assert "compile_kernels()" in stages["gateway-build"]

    def env(stage: str) -> dict[str, str]:
        joined = stage.replace("\\\n", " ")
        return dict(re.findall(r"\b(NUMBA_\w+)=(\S+)", " ".join(re.findall(r"^ENV (.*)$", joined, re.MULTILINE))))

    assert (
        env(stages["gateway-build"])
        == env(final_stage)
        == {
            "NUMBA_CACHE_DIR": "/opt/numba-cache",
            "NUMBA_CPU_NAME": "generic",
        }
    )
    cache = env(final_stage)["NUMBA_CACHE_DIR"]
    assert re.search(
        rf"^COPY --from=gateway-build --chown=memefly {re.escape(cache)} {re.escape(cache)}$", final_stage, re.MULTILINE
    )
    from memefly.decoding.captioner import compile_kernels  # what the build runs exists

    compile_kernels()
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


def test_the_gateways_default_targets_are_the_ports_compose_publishes():
    """`memefly serve --backend grpc` on the host, with no targets set, reaches each model where
    compose publishes it (the decoder's default once pointed at the encoder)."""
    from gateway.settings import Settings

    settings = Settings()
    services = compose("gpu")["services"]
    for server in SERVERS:
        published = {
            int(inside): int(outside) for _, outside, inside in (p.split(":") for p in services[server]["ports"])
        }
        host, port = getattr(settings, f"{server}_target").rsplit(":", 1)
        assert host in {"localhost", "127.0.0.1"} and int(port) == published[contract.GRPC_PORT], server


# --- several gateways behind one port (docker-compose.replicas.yml) ---------------------------


def replicas(variant: str = "gpu") -> dict:
    return merge(compose(variant), load("docker-compose.replicas.yml"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_replicas_share_one_port_behind_nginx(variant):
    from gateway.settings import Settings

    services = replicas(variant)["services"]
    assert set(services) == {"encoder", "decoder", "gateway", "export", "proxy"}
    gateway, proxy = services["gateway"], services["proxy"]
    assert "ports" not in gateway  # replicas cannot share a host port
    assert interpolate(str(gateway["deploy"]["replicas"])) == "2"
    assert proxy["ports"] == ["8000:8000"]
    # The official image, pinned, new enough to re-resolve upstream names (`resolve`, 1.27.3).
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)-alpine", proxy["image"])
    assert match and tuple(int(g) for g in match.groups()) >= (1, 27, 3)
    assert proxy["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert "healthcheck" in gateway  # what service_healthy waits for
    # The replicas take the client's address from nginx's X-Forwarded-For (only nginx reaches them).
    assert gateway["environment"]["MEMEFLY_FORWARDED_ALLOW_IPS"] == "*"
    assert gateway["environment"]["MEMEFLY_BACKEND"] == "grpc"  # merged into, not replaced
    conf = host_path(proxy, "/etc/nginx/nginx.conf").read_text()
    gateway_port = re.search(r'"--port", "(\d+)"', (ROOT / "Dockerfile").read_text()).group(1)
    # Re-resolved, and never out of rotation for a 503 (a replica shedding load or draining).
    assert re.search(rf"^\s*server gateway:{gateway_port} resolve max_fails=0;", conf, re.MULTILINE)
    assert "http_503" in conf
    assert "resolver 127.0.0.11" in conf  # Docker's embedded DNS: every replica's address
    assert re.search(r"^\s*listen 8000;", conf, re.MULTILINE)
    # Limits that never cut what a gateway would accept, nor answer before it does.
    settings = Settings()
    largest_body = (settings.max_upload_bytes * 4 // 3 + 256 * 1024) * settings.max_batch_images
    assert int(re.search(r"client_max_body_size (\d+)m;", conf).group(1)) * 2**20 >= largest_body
    assert int(re.search(r"proxy_read_timeout (\d+)s;", conf).group(1)) > settings.request_timeout_s
    assert int(re.search(r"client_body_timeout (\d+)s;", conf).group(1)) == settings.body_timeout_s


def _has_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_docker_compose(), reason="no Docker Compose here")
@pytest.mark.parametrize(
    "files",
    [
        ["docker-compose.yml"],
        ["docker-compose.yml", "docker-compose.cpu.yml"],
        ["docker-compose.yml", "docker-compose.replicas.yml"],
    ],
)
def test_docker_compose_config_accepts_the_files(files):
    """The official parser, where Docker Compose is installed (config needs no engine): the files
    are valid Compose and merge as `merge` above merges them."""
    args = [a for f in files for a in ("-f", str(ROOT / f))]
    out = subprocess.run(
        ["docker", "compose", *args, "--profile", "export", "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    services = json.loads(out)["services"]
    ours = compose("cpu" if "docker-compose.cpu.yml" in files else "gpu")
    if "docker-compose.replicas.yml" in files:
        ours = merge(ours, load("docker-compose.replicas.yml"))
    assert set(services) == set(ours["services"])
    for name in SERVERS:
        assert services[name]["image"] == ours["services"][name]["image"]
        assert services[name]["command"] == ours["services"][name]["command"]
