"""deploy/kubernetes/, checked offline: every object against the Kubernetes API's own schemas
(kubernetes-validate), the KServe objects by structure, and every name, port, mount, flag and
path against what the export writes, what TF Serving accepts and what the gateway expects.

The kustomizations are built with `kubectl kustomize` where kubectl is installed, else by
`build_here` below, which does what these files use of kustomize (resources, ConfigMap
generators with files, env files and merges, strategic-merge patches, image tags) without
the name hashes of generated ConfigMaps.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2
from tf_serving_flags import TF_SERVING_FLAGS, parse_flags

from gateway.settings import Settings
from memefly import contract as c
from memefly.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
VARIANTS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu", "kserve": K8S / "kserve"}
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")  # the oldest with every API used here still served, the newest known
ROLES = {"encoder": c.ENCODER_MODEL, "decoder": c.DECODER_MODEL}
# The lists Kubernetes merges by a key in a strategic-merge patch; other lists are replaced.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "name",
    "env": "name",
    "ports": "containerPort",
}


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


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def build_here(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "resources",
        "configMapGenerator",
        "patches",
        "images",
        "configurations",
    }, f"{directory}: a kustomize feature this test does not build"
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        objects += build_here(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, source = entry.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text()
        for env in generator.get("envs", []):
            data.update(_env_file(directory / env))
        if generator.get("behavior") == "merge":
            find(objects, "ConfigMap", generator["name"])["data"].update(data)
            continue
        metadata = {
            "name": generator["name"],
            **({"labels": generator["options"]["labels"]} if "labels" in generator.get("options", {}) else {}),
        }
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    for patch in kustomization.get("patches", []):
        change = yaml.safe_load((directory / patch["path"]).read_text())
        (index,) = [
            i
            for i, o in enumerate(objects)
            if (o["kind"], o["metadata"]["name"]) == (change["kind"], change["metadata"]["name"])
        ]
        objects[index] = _merge(objects[index], change)
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].split(":")[0] == image["name"]:
                    container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


KUBECTL = shutil.which("kubectl")


def build(directory: Path) -> list[dict]:
    if KUBECTL is None:
        return build_here(directory)
    out = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, check=True).stdout
    return [o for o in yaml.safe_load_all(out) if o]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict] | dict:
    """Objects of a kind, or the one named (a generated ConfigMap's name may carry kustomize's hash)."""
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (
            name is None
            or o["metadata"]["name"] == name
            or (kind == "ConfigMap" and re.fullmatch(rf"{re.escape(name)}-[a-z0-9]{{10}}", o["metadata"]["name"]))
        )
    ]
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
    (config_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == source.split(":", 1)[1]
    ]
    data = config_map["data"]
    assert key in data, f"{path}: no key {key} in {source}"
    return data[key]


def health_script(role: str, port: int = c.REST_PORT, name: str | None = None) -> str:
    """Compose's model-server health check (docker-compose.yml), for another port or name."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    script = compose["services"][role]["healthcheck"]["test"][-1]
    return script.replace(f"/{c.REST_PORT} ", f"/{port} ").replace(
        f"/v1/models/{ROLES[role]} ", f"/v1/models/{name or ROLES[role]} "
    )


# --- every object ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_matches_the_api_schema(variant, version):
    _, objects = variant
    checked = 0
    for obj in objects + build(K8S / "export") + build(K8S / "storage"):
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
        if obj["kind"] != "ConfigMap" or obj["metadata"]["name"].startswith("memefly-gateway"):
            assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "memefly", obj["metadata"]["name"]


def test_every_config_map_and_claim_reference_resolves(variant):
    """By the exact name built (kustomize renames generated ConfigMaps, and must rename the
    references, the ServingRuntime's included): a wrong reference is a pod that never starts.
    The claim is created apart (storage/), so that deleting a deployment keeps the models."""
    _, objects = variant
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    references = []
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec if obj["kind"] == "ServingRuntime" else spec.get("template", {}).get("spec", {})
        references += [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
        references += [e["configMapRef"]["name"] for c in pod.get("containers", []) for e in c.get("envFrom", [])]
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v
        ]
        assert set(claims) <= {"memefly-models"}
    assert references and set(references) <= config_maps, set(references) - config_maps
    assert not find(objects, "PersistentVolumeClaim")
    (claim,) = find(build(K8S / "storage"), "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "memefly-models" and "ReadWriteMany" in claim["spec"]["accessModes"]


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
    settings_map = find(objects, "ConfigMap", "memefly-gateway")["metadata"]["name"]
    assert container["envFrom"] == [{"configMapRef": {"name": settings_map}}]
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
    assert (
        args["enable_batching"]
        == args["enable_model_warmup"]
        == args["enable_serialization_as_tensor_content"]
        == "true"
    )
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
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
        str(c.REST_PORT),
        "/monitoring/prometheus/metrics",
    )
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
    # It writes as the export image's user, into folders an init container made its own.
    assert container["securityContext"]["runAsUser"] == 1000
    (folders,) = pod["initContainers"]
    assert folders["securityContext"]["runAsUser"] == 0
    script = folders["command"][-1]
    for path in (args.models_dir, args.templates_dir):
        assert "mkdir -p" in script and path in script and "chown 1000:1000" in script


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
    assert (
        args["enable_batching"]
        == args["enable_model_warmup"]
        == args["enable_serialization_as_tensor_content"]
        == "true"
    )
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
        find(build(K8S / "storage"), "PersistentVolumeClaim", claim)
        assert folder == f"models/{ROLES[role]}"
        # Each file the runtime names, for this InferenceService's name, is in a mounted ConfigMap.
        files = {flag: value.replace("{{.Name}}", name) for flag, value in args.items() if value.startswith("/config/")}
        assert set(files) == {"batching_parameters_file", "monitoring_config_file"}
        pod = {"volumes": runtime["spec"]["volumes"]}
        for path in files.values():
            assert (
                read_mounted(objects, pod, container, path)
                == (ROOT / f"{role}_service" / PurePosixPath(path).name).read_text()
            )
        assert PurePosixPath(files["batching_parameters_file"]).name == "batching_gpu.txt"
        assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert model["resources"]["requests"]["cpu"] == model["resources"]["limits"]["cpu"] == "4"  # not KServe's 1
        # Served under the InferenceService's name, which the gateway is told; ready when AVAILABLE.
        assert args["model_name"] == "{{.Name}}"
        assert getattr(settings, f"{role}_model") == name
        assert getattr(settings, f"{role}_target") == f"{name}-predictor:80"
        assert model["readinessProbe"]["exec"]["command"] == [
            "bash",
            "-c",
            health_script(role, int(args["rest_api_port"]), name),
        ]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed here: the tests above use build_here")
@pytest.mark.parametrize("name", list(VARIANTS) + ["export", "storage"])
def test_build_here_builds_what_kubectl_kustomize_builds(name):
    """So that the checks mean the same on a machine without kubectl (CI)."""
    directory = VARIANTS.get(name, K8S / name)

    def canonical(objects: list[dict]) -> list[str]:
        text = [json.dumps(o, sort_keys=True) for o in objects]
        return sorted(re.sub(r'"(memefly-[a-z-]+)-[a-z0-9]{10}"', r'"\1"', t) for t in text)

    assert canonical(build(directory)) == canonical(build_here(directory))
