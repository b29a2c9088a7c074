"""deploy/kubernetes/, checked offline: every object against the Kubernetes API's own schemas
(kubernetes-validate), the KServe objects by structure, and every name, port, mount, flag and
path against what the export writes, what TF Serving accepts and what the gateway expects.

The kustomizations are built by `build` below, which does what these files use of kustomize
(resources, ConfigMap generators, strategic-merge patches, image tags) without the name hashes
of generated ConfigMaps; `kubectl kustomize` builds them too where kubectl is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from gateway.settings import Settings
from memefly import contract as c
from memefly.cli import build_parser
from tf_serving_flags import TF_SERVING_FLAGS, parse_flags

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
VARIANTS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu", "kserve": K8S / "kserve"}
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest with every API used here still served, the newest known
ROLES = {"encoder": c.ENCODER_MODEL, "decoder": c.DECODER_MODEL}
# The lists Kubernetes merges by a key in a strategic-merge patch; other lists are replaced.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "volumeMounts": "name",
              "env": "name", "ports": "containerPort"}


# --- a kustomize build, as far as these files need it ------------------------------------


def _merge(base, patch):
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return patch
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            merged = {item[MERGE_KEYS[key]]: item for item in out[key]}
            for item in value:
                name = item[MERGE_KEYS[key]]
                merged[name] = _merge(merged[name], item) if name in merged else item
            out[key] = list(merged.values())
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
    if obj["kind"] == "ServingRuntime":
        pod = spec
    return pod.get("containers", []) + pod.get("initContainers", [])


def build(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "images",
                                  "configurations"}, f"{directory}: a kustomize feature this test does not build"
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += build(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator["files"]:
            key, _, source = entry.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text()
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    for patch in kustomization.get("patches", []):
        change = yaml.safe_load((directory / patch["path"]).read_text())
        (index,) = [i for i, o in enumerate(objects)
                    if (o["kind"], o["metadata"]["name"]) == (change["kind"], change["metadata"]["name"])]
        objects[index] = _merge(objects[index], change)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict] | dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if name is None:
        return found
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request) -> tuple[str, list[dict]]:
    return request.param, build(VARIANTS[request.param])


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def mounted(objects: list[dict], pod: dict, container: dict, path: str) -> tuple[str, str]:
    """The (volume source, path inside it) that a container path comes from: ('configMap:NAME', key)
    or ('pvc:CLAIM', sub/path)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        if PurePosixPath(path).is_relative_to(mount["mountPath"]):
            rest = str(PurePosixPath(path).relative_to(mount["mountPath"]))
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                return f"configMap:{volume['configMap']['name']}", rest
            inside = PurePosixPath(mount.get("subPath", "")) / rest
            return f"pvc:{volume['persistentVolumeClaim']['claimName']}", str(inside)
    raise AssertionError(f"{path} is in no volume of {container['name']}")


def read_mounted(objects, pod, container, path: str) -> str:
    source, key = mounted(objects, pod, container, path)
    assert source.startswith("configMap:"), f"{path} should come from a ConfigMap"
    data = find(objects, "ConfigMap", source.split(":", 1)[1])["data"]
    assert key in data, f"{path}: no key {key} in {source}"
    return data[key]


def health_script(role: str, port: int = c.REST_PORT, name: str | None = None) -> str:
    """Compose's model-server health check (docker-compose.yml), for another port or name."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    script = compose["services"][role]["healthcheck"]["test"][-1]
    return script.replace(f"/{c.REST_PORT} ", f"/{port} ").replace(f"/v1/models/{ROLES[role]} ", f"/v1/models/{name or ROLES[role]} ")


# --- every object ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_matches_the_api_schema(variant, version):
    _, objects = variant
    checked = 0
    for obj in objects + build(K8S / "export"):
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a CRD: checked by structure below
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 4


def test_names_are_unique_and_labelled(variant):
    _, objects = variant
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys))
    for obj in objects:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]), obj["metadata"]["name"]
        if obj["kind"] != "ConfigMap" or obj["metadata"]["name"] == "memefly-gateway":
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "memefly", obj["metadata"]["name"]


def test_the_serving_config_copies_equal_the_compose_ones():
    for role in ROLES:
        copies = K8S / "serving-config" / role
        originals = ROOT / f"{role}_service"
        names = {p.name for p in originals.iterdir() if p.suffix in (".config", ".txt")}
        assert {p.name for p in copies.iterdir()} == names
        for name in names:
            assert (copies / name).read_text() == (originals / name).read_text(), f"{role}/{name}"


# --- the gateway ------------------------------------------------------------------------------


def gateway_settings(objects: list[dict]) -> Settings:
    data = find(objects, "ConfigMap", "memefly-gateway")["data"]
    assert all(key.startswith("MEMEFLY_") for key in data)
    return Settings.from_env(data)


def test_gateway(variant):
    _, objects = variant
    deployment = find(objects, "Deployment", "memefly-gateway")
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    settings = gateway_settings(objects)
    assert settings.backend == "grpc"
    assert container["envFrom"] == [{"configMapRef": {"name": "memefly-gateway"}}]
    assert container["args"] == ["memefly", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Drains for shutdown_grace_s on SIGTERM: Kubernetes must wait longer before it kills.
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_grace_s
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"] == 8000
    # Blank templates to draw on: what the export Job downloads.
    assert mounted(objects, pod, container, str(settings.templates_dir)) == ("pvc:memefly-models", "templates")
    assert all(m.get("readOnly") for m in container["volumeMounts"])
    # Scaled on CPU, which needs a CPU request.
    hpa = find(objects, "HorizontalPodAutoscaler", "memefly-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "memefly-gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert container["resources"]["requests"]["cpu"]
    service = find(objects, "Service", "memefly-gateway")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


# --- TF Serving as Deployments (base, gpu) -----------------------------------------------------


@pytest.mark.parametrize("name", ["base", "gpu"])
@pytest.mark.parametrize("role", ROLES)
def test_model_server_deployment(name, role):
    objects = build(VARIANTS[name])
    deployment = find(objects, "Deployment", f"memefly-{role}")
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    assert container["command"] == ["tensorflow_model_server"]
    args = parse_flags(container["args"])
    assert set(args) <= TF_SERVING_FLAGS, set(args) - TF_SERVING_FLAGS
    assert int(args["port"]) == c.GRPC_PORT and int(args["rest_api_port"]) == c.REST_PORT
    assert args["enable_batching"] == args["enable_model_warmup"] == "true"
    # The same files as compose, through the ConfigMaps.
    kind = "gpu" if name == "gpu" else "cpu"
    assert args["batching_parameters_file"] == f"/config/batching_{kind}.txt"
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        text = read_mounted(objects, pod, container, args[flag])
        assert text == (ROOT / f"{role}_service" / PurePosixPath(args[flag]).name).read_text()
    # The model config's base path lies where the export Job writes the model.
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(read_mounted(objects, pod, container, args["model_config_file"]), config)
    (model,) = config.model_config_list.config
    assert model.name == ROLES[role]
    assert mounted(objects, pod, container, model.base_path) == ("pvc:memefly-models", f"models/{ROLES[role]}")
    # Image: compose's tag, the GPU build where there is a GPU.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][role]["image"]
    assert container["image"] == (compose if name == "gpu" else compose.removesuffix("-gpu"))
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == 1) == (name == "gpu")
    # Ready when the model is AVAILABLE: compose's check; Prometheus on the REST port.
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["exec"]["command"] == ["bash", "-c", health_script(role)]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(c.REST_PORT),
                                                                                     "/monitoring/prometheus/metrics")
    # The gateway's target is this Deployment's headless Service on the gRPC port.
    settings = gateway_settings(objects)
    host, port = getattr(settings, f"{role}_target").rsplit(":", 1)
    service = find(objects, "Service", host)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert grpc_port["targetPort"] in {p["name"] for p in container["ports"] if p["containerPort"] == c.GRPC_PORT}
    assert getattr(settings, f"{role}_model") == ROLES[role]


# --- the export Job ----------------------------------------------------------------------------


def test_the_export_job_writes_what_the_servers_and_gateway_read():
    (job,) = find(build(K8S / "export"), "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][0] == "memefly"
    args = build_parser().parse_args(container["command"][1:])
    assert args.default_model and args.download_templates and args.weights == "imagenet"
    # `memefly export` writes MODELS_DIR/<model>/<version>: where the servers' base paths are.
    assert mounted([], pod, container, args.models_dir) == ("pvc:memefly-models", "models")
    assert mounted([], pod, container, args.templates_dir) == ("pvc:memefly-models", "templates")
    assert pod["securityContext"]["runAsUser"] == 1000  # the export image's user


# --- KServe ------------------------------------------------------------------------------------


def test_kserve_runtime_and_inference_services():
    objects = build(VARIANTS["kserve"])
    runtime = find(objects, "ServingRuntime", "memefly-tfserving")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe requires
    args = parse_flags(container["args"])
    assert set(args) <= TF_SERVING_FLAGS, set(args) - TF_SERVING_FLAGS
    assert args["model_base_path"] == "/mnt/models"  # where KServe puts the storageUri
    assert args["enable_batching"] == args["enable_model_warmup"] == "true"
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("h2c", int(args["port"]))  # gRPC through KServe
    assert "grpc-v1" in runtime["spec"]["protocolVersions"]
    settings = gateway_settings(objects)
    assert settings.model_version is None  # KServe's TF Serving loads the newest version only
    services = find(objects, "InferenceService")
    assert {s["metadata"]["name"] for s in services} == {"memefly-encoder", "memefly-decoder"}
    for service in services:
        name = service["metadata"]["name"]
        role = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)  # DNS-1035: no underscores
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == "memefly-tfserving"
        assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
        # The model folder the export Job writes, in the claim.
        claim, _, folder = model["storageUri"].removeprefix("pvc://").partition("/")
        find(objects, "PersistentVolumeClaim", claim)
        assert folder == f"models/{ROLES[role]}"
        # Each file the runtime names, for this InferenceService's name, is in a mounted ConfigMap.
        files = {flag: value.replace("{{.Name}}", name) for flag, value in args.items() if value.startswith("/config/")}
        assert set(files) == {"batching_parameters_file", "monitoring_config_file"}
        pod = {"volumes": runtime["spec"]["volumes"]}
        for flag, path in files.items():
            assert read_mounted(objects, pod, container, path) == (ROOT / f"{role}_service" / PurePosixPath(path).name).read_text()
        assert PurePosixPath(files["batching_parameters_file"]).name == "batching_gpu.txt"
        assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
        # Served under the InferenceService's name, which the gateway is told; ready when AVAILABLE.
        assert args["model_name"] == "{{.Name}}"
        assert getattr(settings, f"{role}_model") == name
        assert getattr(settings, f"{role}_target") == f"{name}-predictor:80"
        assert model["readinessProbe"]["exec"]["command"] == ["bash", "-c",
                                                               health_script(role, int(args["rest_api_port"]), name)]


def test_kserve_config_references_are_renamed_with_the_generated_config_maps():
    """kustomize hashes generated ConfigMap names; it renames references in a ServingRuntime only
    when told where they are."""
    configuration = yaml.safe_load((VARIANTS["kserve"] / "kustomizeconfig.yaml").read_text())
    (reference,) = configuration["nameReference"]
    assert reference["kind"] == "ConfigMap"
    runtime = find(build(VARIANTS["kserve"]), "ServingRuntime", "memefly-tfserving")
    for spec in reference["fieldSpecs"]:
        assert spec["kind"] == "ServingRuntime"
        node = [runtime]
        for part in spec["path"].split("/"):
            node = [item for n in node for item in (n if isinstance(n, list) else [n])]
            node = [n[part] for n in node if part in n]
        assert sorted(n for n in node) == ["memefly-decoder-config", "memefly-encoder-config"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")
@pytest.mark.parametrize("name", list(VARIANTS) + ["export"])
def test_kubectl_kustomize_builds_the_same_objects(name):
    directory = VARIANTS.get(name, K8S / name)
    built = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    theirs = {(o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])) for o in yaml.safe_load_all(built) if o}
    assert theirs == {(o["kind"], o["metadata"]["name"]) for o in build(directory)}
