"""The deploy/ files: parsed, validated against what ships with the installed Ray and MLflow, and checked against
each other and against the nrd-bench CLI (images, versions, ports, paths, environment variables, commands)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ray = pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")
jsonschema = pytest.importorskip("jsonschema")

from conftest import readme_commands  # noqa: E402
from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from pipeline.commands.cli import build_parser  # noqa: E402
from pipeline.jobs.submit import (  # noqa: E402
    ADDRESS_ENV,
    TOKEN_ENV,
    TOKEN_PATH_ENV,
    TRACKING_ENV,
    build_entrypoint,
    upload_limit,
)
from pipeline.search.spaces import load_space  # noqa: E402
from pipeline.training.tracking import resolve_tracking_uri  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SHARED_CLAIM = "nrd-bench-shared"


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def load_all(name: str) -> list[dict]:
    return [document for document in yaml.safe_load_all((DEPLOY / name).read_text()) if document]


def pyproject(pattern: str) -> list[str]:
    """What ``pattern``'s group matches in pyproject.toml (read with a regex: no TOML parser on Python 3.10)."""
    return re.findall(pattern, (ROOT / "pyproject.toml").read_text(), flags=re.M)


def requirement(package: str) -> SpecifierSet:
    (text,) = pyproject(rf'^\s*"{package}([<>=!~][^"]*)",')
    return SpecifierSet(text)


def image() -> str:
    """The nrd-bench image every deploy file must name: the RayCluster head's."""
    return load("kuberay/raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]


def ray_containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [document for document in documents if document["kind"] == kind]


def named(documents: list[dict], kind: str, name: str) -> dict:
    matches = [document for document in by_kind(documents, kind) if document["metadata"]["name"] == name]
    assert len(matches) == 1, f"one {kind} named {name} expected"
    return matches[0]


# ------------------------------------------------------------------------------------------------ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def installed_packages(command: str) -> list[str]:
    """What a `pip install` command installs: its arguments without the options that only change how (--quiet)."""
    words = shlex.split(command)
    return [word for word in words[words.index("install") + 1 :] if word == "-e" or not word.startswith("-")]


def makefile_installs() -> list[list[str]]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("$(STAMP):"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return [installed_packages(line) for line in recipe if "pip install" in line]


def dockerfile_installs() -> list[list[str]]:
    commands = [part for kind, rest in dockerfile_instructions() if kind == "RUN" for part in rest.split("&&")]
    return [installed_packages(command) for command in commands if "pip install" in command]


def test_the_image_installs_what_the_makefile_installs_in_the_same_order():
    make, docker = makefile_installs(), dockerfile_installs()
    assert len(make) == 2 and make[0][0].startswith("torch==") and make[1][0] == "-e"  # the Makefile as read
    assert len(docker) == 2
    assert docker[0] == make[0]  # the same torch pin, first
    # the project: its dev extras optional, the system-metrics extra in the image (the cluster spaces monitor)
    assert docker[1] in (make[1], [word.replace("[dev]", "[system-metrics]") for word in make[1]])


def test_the_base_image_carries_the_pinned_torch_that_pyproject_accepts():
    pin = makefile_installs()[0][0].removeprefix("torch==")
    base = next(rest for kind, rest in dockerfile_instructions() if kind == "FROM")
    assert base.startswith("pytorch/pytorch:") and base.split(":")[1].startswith(f"{pin}-cuda")
    assert pin in requirement("torch")


def test_the_image_copies_the_packages_and_its_build_context_admits_them():
    copies = [shlex.split(rest)[:-1] for kind, rest in dockerfile_instructions() if kind == "COPY"]
    sources = {source.rstrip("/") for sources in copies for source in sources}
    (include,) = pyproject(r"^include = \[(.*)\]")
    packages = set(re.findall(r'"(\w+)\*?"', include))
    assert packages == {"nrd", "pipeline"}  # pyproject as read
    assert packages | {"pyproject.toml", *pyproject(r'^readme = "(.+)"')} <= sources
    assert all((ROOT / source).exists() for source in sources)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert ignore[ignore.index("**")] == "**" and sources <= admitted  # everything else stays out of the context


# ---------------------------------------------------------------------------------- Ray cluster launcher (AWS)
def test_cluster_launcher_config_validates_against_the_schema_shipped_with_ray():
    config = load("ray-cluster.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))  # Ray's AWS defaults filled in, as `ray up` does
    validate_config(prepared)
    assert "ray-wheels" not in json.dumps(prepared)  # Ray's default setup (installing a nightly Ray) is replaced
    typo = copy.deepcopy(config)
    typo["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(typo, schema)


def test_cluster_launcher_config_agrees_with_the_image_storage_tracking_and_sweeps():
    config = load("ray-cluster.yaml")
    assert config["docker"]["image"] == image()
    options = config["docker"]["run_options"]
    assert "--env RAY_AUTH_MODE=token" in options and "--volume /mnt/shared:/mnt/shared" in options
    mounts = config["file_mounts"]
    assert [(remote, local) for remote, local in mounts.items() if remote.endswith("/.ray/auth_token")] == [
        ("/root/.ray/auth_token", "~/.ray/auth_token")
    ]
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    assert f"{TOKEN_ENV}=" not in text  # the token never sits in the config
    efs = " ".join(config["initialization_commands"])
    assert re.search(rf"\.efs\.{config['provider']['region']}\.amazonaws\.com:/ /mnt/shared\b", efs)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(rule["FromPort"], rule["ToPort"]) for rule in rules] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        port = re.search(rf"{TRACKING_ENV}=http://.+?:(\d+);", " ".join(commands))
        assert port and int(port[1]) == compose_mlflow_port()
    resources = load_space(ROOT / "tune_spaces" / "decoders.yaml").search.resources
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["resources"]["GPU"] >= resources["gpus_per_worker"]
    assert worker["resources"]["CPU"] >= resources["cpus_per_worker"]
    assert worker["max_workers"] * worker["resources"]["GPU"] >= resources["workers"] * resources["gpus_per_worker"]


# ---------------------------------------------------------------------------------------------------- KubeRay
def test_the_rayjob_runs_the_raycluster_with_a_sweep_our_cli_accepts():
    cluster = named(load_all("kuberay/raycluster.yaml"), "RayCluster", "nrd-bench")
    job = by_kind(load_all("kuberay/rayjob.yaml"), "RayJob")[0]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ and spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert {container["image"] for container in ray_containers(spec)} == {image()}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "nrd-bench"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "tune"
    workdir = next(rest for kind, rest in dockerfile_instructions() if kind == "WORKDIR")
    space = load_space(ROOT / Path(args.space).relative_to(workdir))  # the space file the image holds
    mount = shared_mount(spec)
    assert args.dataset_dir.startswith(f"{mount}/") and args.storage_path.startswith(f"{mount}/")
    gpu_group = next(group for group in spec["workerGroupSpecs"] if group["groupName"] == "gpu")
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    resources = space.search.resources
    assert int(limits["nvidia.com/gpu"]) >= resources["gpus_per_worker"]
    assert float(limits["cpu"]) >= resources["cpus_per_worker"]
    gpus = gpu_group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    assert gpus >= resources["workers"] * resources["gpus_per_worker"]  # one trial fits


def shared_mount(spec: dict) -> str:
    """Where every Ray pod mounts the shared claim: one path, the same everywhere."""
    paths = set()
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {volume["name"]: volume.get("persistentVolumeClaim", {}).get("claimName") for volume in pod["volumes"]}
        volumes = {name for name, claim in claims.items() if claim == SHARED_CLAIM}
        assert len(volumes) == 1
        for container in pod["containers"]:
            paths |= {mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] in volumes}
    assert len(paths) == 1
    return paths.pop()


def test_the_shared_claim_exists_and_every_node_can_write_it():
    claim = named(load_all("kuberay/storage.yaml"), "PersistentVolumeClaim", SHARED_CLAIM)
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert claim["metadata"]["namespace"] == load("kuberay/raycluster.yaml")["metadata"]["namespace"]
    assert shared_mount(load("kuberay/raycluster.yaml")["spec"]) == "/mnt/shared"  # where ray-cluster.yaml has EFS


def test_ray_pods_reach_mlflow_through_its_clusterip_service():
    documents = load_all("mlflow/mlflow.yaml")
    cluster = load("kuberay/raycluster.yaml")
    uris = {env_of(container).get(TRACKING_ENV) for container in ray_containers(cluster["spec"])}
    assert len(uris) == 1 and None not in uris
    uri = uris.pop()
    parts = urlsplit(uri)
    service = named(documents, "Service", parts.hostname.split(".")[0])
    assert parts.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert service["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == parts.port
    deployment = named(documents, "Deployment", service["metadata"]["name"])
    assert deployment["spec"]["selector"]["matchLabels"].items() <= service["spec"]["selector"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    arguments = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert int(arguments["port"]) == target["containerPort"]
    allowed = arguments["allowed-hosts"].split(",")
    assert "*" not in allowed
    for host in (parts.netloc, f"127.0.0.1:{port['port']}", f"localhost:{port['port']}"):  # pods, port-forward
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "mlflow.example.com")
    with pytest.MonkeyPatch.context() as patch:  # the variable the Ray pods set is the one nrd-bench reads
        patch.delenv(TRACKING_ENV, raising=False)
        assert resolve_tracking_uri() != uri
        patch.setenv(TRACKING_ENV, uri)
        assert resolve_tracking_uri() == uri


def test_mlflow_on_kubernetes_keeps_postgres_and_its_password_private():
    documents = load_all("mlflow/mlflow.yaml")
    assert all(document["metadata"]["namespace"] == "nrd-bench" for document in documents)
    assert {service["spec"]["type"] for service in by_kind(documents, "Service")} == {"ClusterIP"}
    assert not by_kind(documents, "Ingress") and not by_kind(documents, "Secret")  # the Secret is made by kubectl
    mlflow_env = named(documents, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["env"]
    password = next(item for item in mlflow_env if item["name"] == "POSTGRES_PASSWORD")
    assert "secretKeyRef" in password["valueFrom"]
    backend = urlsplit(next(item["value"] for item in mlflow_env if item["name"] == "MLFLOW_BACKEND_STORE_URI"))
    postgres = named(documents, "Service", backend.hostname.split(".")[0])
    assert backend.scheme == "postgresql" and postgres["spec"]["ports"][0]["port"] == backend.port
    policy = named(documents, "NetworkPolicy", "mlflow-postgres-from-mlflow-only")
    assert policy["spec"]["podSelector"]["matchLabels"] == postgres["spec"]["selector"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]


# ------------------------------------------------------------------------------------------ MLflow (compose)
def compose_mlflow_port() -> int:
    (mapping,) = load("mlflow/docker-compose.yaml")["services"]["mlflow"]["ports"]
    return int(mapping.rsplit(":", 2)[1])


def test_compose_publishes_mlflow_on_loopback_or_a_chosen_private_address_only():
    compose = load("mlflow/docker-compose.yaml")
    services = compose["services"]
    assert "ports" not in services["postgres"]
    (mapping,) = services["mlflow"]["ports"]
    bind = re.fullmatch(r"\$\{MLFLOW_BIND_ADDRESS:-([0-9.]+)\}:(\d+):(\d+)", mapping)
    assert bind and bind[1] == "127.0.0.1"
    command = " ".join(services["mlflow"]["command"])
    assert f"--port {bind[3]}" in command and "--allowed-hosts" not in command
    # MLflow's default Host check admits what reaches it here: loopback and private addresses, not a public name
    defaults = get_default_allowed_hosts()
    assert is_allowed_host_header(defaults, f"127.0.0.1:{bind[2]}")
    assert is_allowed_host_header(defaults, "10.0.1.23:5000")
    assert not is_allowed_host_header(defaults, "mlflow.example.com:5000")
    assert compose["networks"]["backend"]["internal"] is True
    assert services["postgres"]["networks"] == ["backend"] and "backend" in services["mlflow"]["networks"]
    assert "postgresql://" in command and services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    secret_file = compose["secrets"]["postgres_password"]["file"]
    assert Path(secret_file).name in (DEPLOY / "mlflow" / ".gitignore").read_text().split()


def test_the_mlflow_server_image_is_the_mlflow_version_nrd_bench_pins():
    base = (DEPLOY / "mlflow" / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert base == f"ghcr.io/mlflow/mlflow:v{mlflow.__version__}"
    assert mlflow.__version__ in requirement("mlflow")
    compose_image = load("mlflow/docker-compose.yaml")["services"]["mlflow"]["image"]
    kubernetes_image = named(load_all("mlflow/mlflow.yaml"), "Deployment", "mlflow")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert compose_image == kubernetes_image == f"{image().rsplit(':', 1)[0]}-mlflow:{mlflow.__version__}"


def test_the_image_tag_is_the_project_version():
    assert [image().rsplit(":", 1)[1]] == pyproject(r'^version = "(.+)"')


# ------------------------------------------------------------------------------------------------- README
def test_every_nrd_bench_command_in_the_deploy_readme_parses_with_the_real_cli():
    parser = build_parser()
    parsed = []
    for words in readme_commands(DEPLOY / "README.md"):
        if words and words[0] == "nrd-bench":
            args = parser.parse_args(words[1:])
            if args.command == "submit":
                assert build_entrypoint(args.entrypoint).startswith("nrd-bench ")
            parsed.append(args.command)
    assert {"submit", "jobs", "pareto"} <= set(parsed) and len(parsed) >= 5


def test_the_deploy_readme_builds_the_image_and_names_the_variables_nrd_bench_reads():
    commands = readme_commands(DEPLOY / "README.md")
    builds = [words for words in commands if words[:2] == ["docker", "build"]]
    assert ["-f", "deploy/Dockerfile", "-t", image(), "."] == builds[0][2:]
    text = (DEPLOY / "README.md").read_text()
    for name in (ADDRESS_ENV, TOKEN_ENV, TOKEN_PATH_ENV, TRACKING_ENV):
        assert f"{name}=" in text, name
    assert f"Ray Jobs accepts at most {upload_limit() // 2**20} MiB" in text
    cluster = load("kuberay/raycluster.yaml")
    assert f"get secret {cluster['metadata']['name']} " in text  # KubeRay names the token's Secret after the cluster
    dashboard = next(p for p in ray_containers(cluster["spec"])[0]["ports"] if p["name"] == "dashboard")
    port = dashboard["containerPort"]
    assert f"svc/{cluster['metadata']['name']}-head-svc {port}:{port}" in text
