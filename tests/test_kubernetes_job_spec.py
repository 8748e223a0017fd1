"""The Kubernetes backend's job spec for a request (issue 29, item 7), rendered without a cluster.

MLflow's Kubernetes backend (``mlflow.projects.run(backend="kubernetes")``) reads the backend config, loads the job
template, builds and pushes an image, and creates the Job that ``_get_kubernetes_job_definition`` renders from the
template, the entry point's command and the run's environment. Only the image build, the push and the Job's
creation need Docker and a cluster; this test runs everything else with MLflow's own functions, for a request as the
registry plugin turns it into project parameters, and checks the Job it would create: command, resources,
deadline, environment, and that Kubernetes' own ``V1Job`` model knows every field of it. Nothing here ran against
a real cluster.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
IMAGE, DIGEST = "registry.example.com/mlflow-unlearn-jobs:5e1f", "sha256:" + "0" * 64
TRACKING_URI = "https://mlflow.example.com"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _import_mlflow_kubernetes():
    """MLflow's renderer, which imports the ``kubernetes`` and ``docker`` clients (``pip install -e ".[test]"``)."""
    import os

    if os.environ.get("CI") == "true":
        import mlflow.projects.kubernetes as kb
    else:
        kb = pytest.importorskip("mlflow.projects.kubernetes",
                                 reason='needs the kubernetes and docker clients: pip install -e ".[test]"')
    return kb


def _render(tmp_path: Path, monkeypatch, request_value: str, *, nproc: int = 1) -> tuple[dict, list[str]]:
    """The Job MLflow would create for ``request_value``, and the entry point's command as MLflow builds it."""
    import mlflow
    from mlflow.projects import _parse_kubernetes_config, _project_spec
    from mlflow.projects.docker import validate_docker_env
    from mlflow.projects.utils import get_entry_point_command, get_run_env_vars
    from mlflow_unlearn_plugins.job import kubernetes_project_dir
    from mlflow_unlearn_plugins.request import SecurityPolicy, parse_request

    from mlflow_unlearn.tracking import project_dir

    kb = _import_mlflow_kubernetes()
    monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    config = json.loads((DOCKER / "kubernetes_backend_config.json").read_text())
    config["kube-job-template-path"] = str(DOCKER / "kubernetes_job_template.yaml")  # as installed on the server
    kube_config = _parse_kubernetes_config(config)

    project = _project_spec.load_project(kubernetes_project_dir(str(project_dir()), IMAGE, str(tmp_path / "k8s")))
    validate_docker_env(project)
    request = parse_request(request_value, SecurityPolicy()).replace(device="cuda")  # as the job passes it on
    parameters = request.project_parameters("models:/fraud/4", onnx=True)
    entry_point = "unlearn"
    if nproc > 1:
        entry_point, parameters = "unlearn_distributed", parameters | {"nproc": str(nproc)}
    command = kb._get_run_command(get_entry_point_command(project, entry_point, parameters, str(tmp_path / "s")))
    mlflow.set_tracking_uri(TRACKING_URI)
    env = get_run_env_vars(run_id="0123456789abcdef0123456789abcdef", experiment_id="7")
    job = kb._get_kubernetes_job_definition(project.name, IMAGE, DIGEST, command, env,
                                            kube_config["kube-job-template"])
    return job, command


def test_the_backend_config_example_is_what_mlflow_parses():
    from mlflow.projects import _parse_kubernetes_config

    config = json.loads((DOCKER / "kubernetes_backend_config.json").read_text())
    assert set(config) == {"kube-context", "repository-uri", "kube-job-template-path"}
    config["kube-job-template-path"] = str(DOCKER / "kubernetes_job_template.yaml")
    assert _parse_kubernetes_config(config)["kube-job-template"]["kind"] == "Job"


def test_the_job_for_a_request_has_its_command_resources_deadline_and_environment(tmp_path, monkeypatch):
    job, command = _render(tmp_path, monkeypatch, "forget=classes:3,7; method=scrub; onnx=false")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    # command: the installed package's unlearn command with the request's parameters, one argv word each
    assert container["command"] == command
    assert command[:5] == ["python", "-m", "mlflow_unlearn", "unlearn", "models:/fraud/4"]
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags | {"--config": "", "--data": ""} == {
        "--forget": "classes:3,7", "--method": "scrub", "--data": "", "--config": "", "--reference": "none",
        "--seed": "0", "--register": "true", "--device": "cuda", "--onnx-copy": "false"}
    assert container["image"] == f"{IMAGE}@{DIGEST}"

    # resources: a GPU and memory limit, CPU and memory requests
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # quantities are strings (V1Job)
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    # deadline: the Job (all its pods) is stopped after activeDeadlineSeconds, and never retried
    assert isinstance(job["spec"]["activeDeadlineSeconds"], int) and 0 < job["spec"]["activeDeadlineSeconds"] <= 86400
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"

    # environment: the run MLflow created, the server as the pods see it, secrets from a Secret and never inline
    env = {item["name"]: item for item in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == TRACKING_URI
    assert env["MLFLOW_RUN_ID"]["value"] == "0123456789abcdef0123456789abcdef"
    assert env["MLFLOW_EXPERIMENT_ID"]["value"] == "7"
    assert env["OMP_NUM_THREADS"]["value"] == container["resources"]["requests"]["cpu"]
    assert "valueFrom" in env["MLFLOW_TRACKING_TOKEN"] and "value" not in env["MLFLOW_TRACKING_TOKEN"]
    assert "MLFLOW_UNLEARN_DIGEST_KEY" not in env  # the key is a mounted file, not a value in the Job
    key_dir = Path(env["MLFLOW_UNLEARN_DIGEST_KEY_FILE"]["value"]).parent
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    secret_volume = next(v for v in pod["volumes"] if "secret" in v)
    assert mounts[secret_volume["name"]]["mountPath"] == str(key_dir) and mounts[secret_volume["name"]]["readOnly"]

    # names a cluster accepts
    assert _DNS_LABEL.match(job["metadata"]["name"]) and _DNS_LABEL.match(container["name"])


def test_kubernetes_own_model_knows_every_field_of_the_job(tmp_path, monkeypatch):
    """A field at the wrong level or misspelt (``activeDeadlineSecond``) is dropped by the client's ``V1Job`` model
    and the round trip differs; a real API server would reject or ignore it."""
    _import_mlflow_kubernetes()
    from kubernetes.client import ApiClient

    job, _ = _render(tmp_path, monkeypatch, "forget=random:0.05:1; method=nitc; reference=retrain")

    api = ApiClient()

    def round_trip(manifest: dict) -> dict:
        class Response:  # the client before 34 takes a response object, later ones its text and content type
            data = json.dumps(manifest)

        if "content_type" in inspect.signature(api.deserialize).parameters:
            model = api.deserialize(Response.data, "V1Job", "application/json")
        else:
            model = api.deserialize(Response(), "V1Job")
        return api.sanitize_for_serialization(model)

    assert round_trip(job) == job
    broken = json.loads(json.dumps(job))
    broken["spec"]["activeDeadlineSecond"] = broken["spec"].pop("activeDeadlineSeconds")
    assert round_trip(broken) != broken


def test_a_distributed_request_runs_torchrun_in_the_job(tmp_path, monkeypatch):
    job, command = _render(tmp_path, monkeypatch, "forget=classes:3", nproc=4)
    assert command[:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == command


def test_the_dockerfile_copies_what_the_package_build_needs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copied = [word for line in dockerfile.splitlines() if line.startswith("COPY")
              for word in line.split()[1:-1]]
    assert copied and all((REPO / name).exists() for name in copied), copied
    assert {"setup.cfg", "mlflow_unlearn", "plugins"} <= set(copied)
    assert "WORKDIR /mlflow/projects/code" in dockerfile  # where MLflow's per-run image puts the project
