"""Server-side settings of the registry plugin, read once from the environment by :func:`read_settings`.

Every ``MLFLOW_UNLEARN_*`` variable (and the ``_MLFLOW_SERVER_*`` variables that ``mlflow server`` sets for its
workers) is read here and nowhere else. The store reads the settings when it is constructed and hands them to
each launcher process explicitly, as JSON on its command line (:meth:`PluginSettings.to_json`).

Example:
    >>> settings = read_settings({"MLFLOW_UNLEARN_NPROC": "2", "MLFLOW_UNLEARN_LOG_DIR": "/srv/logs",
    ...                           "MLFLOW_UNLEARN_ONNX": "false"})
    >>> settings.launcher.nproc, settings.launcher.onnx, settings.policy.allowed_roots
    (2, False, ())
    >>> PluginSettings.from_json(settings.to_json()) == settings
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_unlearn_plugins.request import ALLOW_URLS_ENV, ALLOWED_ROOTS_ENV, SecurityPolicy

from mlflow_unlearn.data.grammar import parse_flag
from mlflow_unlearn.tracking.keys import DigestKey, read_digest_key

BACKEND_ENV = "MLFLOW_UNLEARN_BACKEND"
BACKEND_CONFIG_ENV = "MLFLOW_UNLEARN_BACKEND_CONFIG"
TRACKING_URI_ENV = "MLFLOW_UNLEARN_TRACKING_URI"
DEVICE_ENV = "MLFLOW_UNLEARN_DEVICE"
NPROC_ENV = "MLFLOW_UNLEARN_NPROC"
DOCKER_IMAGE_ENV = "MLFLOW_UNLEARN_DOCKER_IMAGE"
LOG_DIR_ENV = "MLFLOW_UNLEARN_LOG_DIR"
MAX_JOBS_ENV = "MLFLOW_UNLEARN_MAX_JOBS"
ONNX_ENV = "MLFLOW_UNLEARN_ONNX"
WEBHOOK_SECRET_ENV = "MLFLOW_UNLEARN_WEBHOOK_SECRET"
MAX_RUN_ENV = "MLFLOW_UNLEARN_MAX_RUN_S"
#: The deployment's longest run time of a request by default: 6 h, the Kubernetes Job template's
#: ``activeDeadlineSeconds`` (a request that needs longer asks the operator to raise both).
DEFAULT_MAX_RUN_S = 6 * 3600
LOG_RETENTION_ENV = "MLFLOW_UNLEARN_LOG_RETENTION_DAYS"
BACKENDS = ("local", "kubernetes")
# Set by `mlflow server` for its workers (mlflow.server.constants and mlflow.server.handlers).
_SERVER_BACKEND_URI_ENV = "_MLFLOW_SERVER_FILE_STORE"
_SERVER_REGISTRY_URI_ENV = "_MLFLOW_SERVER_REGISTRY_STORE"
_SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"
_SERVER_STATIC_PREFIX_ENV = "_MLFLOW_STATIC_PREFIX"
_SERVER_SGI_ENV = "_MLFLOW_SGI_NAME"
_PROXIED_ARTIFACTS = "mlflow-artifacts:"


@dataclass(frozen=True)
class LauncherSettings:
    """How a launcher runs a request's job.

    Args:
        backend: MLflow Projects backend, ``local`` or ``kubernetes`` (:data:`BACKEND_ENV`).
        backend_config: JSON file for the backend (``kube-context``, ``repository-uri``,
            ``kube-job-template-path``); required for ``kubernetes`` (:data:`BACKEND_CONFIG_ENV`).
        tracking_uri: tracking URI the job uses (:data:`TRACKING_URI_ENV`); default: the server's own address when
            it proxies artifacts, else its backend store. Must be an ``http(s)://`` address on Kubernetes.
        device: ``device`` parameter of the job (:data:`DEVICE_ENV`, default ``auto``).
        nproc: processes of the job (:data:`NPROC_ENV`, default 1); above 1 the job is the project's
            ``unlearn_distributed`` entry point (``torchrun``, DistributedDataParallel, rank 0 registers), which
            only methods that support it accept.
        docker_image: base image of the Kubernetes job (:data:`DOCKER_IMAGE_ENV`).
        log_dir: where launcher and job output goes (:data:`LOG_DIR_ENV`).
        max_jobs: requests whose job runs at once (:data:`MAX_JOBS_ENV`; default :func:`default_max_jobs`); the
            others wait as ``queued``, first in first out, with a ``mlflow_unlearn.queue_position`` tag.
        onnx: whether a job logs an ONNX copy of the new version unless its request says ``onnx=`` (:data:`ONNX_ENV`,
            default true); off for models that ONNX cannot export, or to save the export's seconds of CPU per job.
        max_run_s: the longest run time of a request, in seconds from when it takes a job slot (:data:`MAX_RUN_ENV`,
            default :data:`DEFAULT_MAX_RUN_S`; 0: no limit). A request's own ``timeout=`` may only be shorter.
        log_retention_days: how long the log file of a request that is no longer queued or running is kept, counted
            from its last write (:data:`LOG_RETENTION_ENV`, default 30; 0 keeps every log). The scheduler's recovery
            deletes older ones (:mod:`mlflow_unlearn_plugins.retention`).

    Raises:
        ValueError: for a max_jobs or nproc below 1, an unknown backend, a non-boolean onnx, a negative log retention,
            or a Kubernetes backend without its config file or an HTTP tracking URI.
    """

    backend: str = "local"
    backend_config: str = ""
    tracking_uri: str = ""
    device: str = "auto"
    nproc: int = 1
    docker_image: str = "mlflow-unlearn:latest"
    log_dir: str = ""
    max_jobs: int = 1
    onnx: bool = True
    max_run_s: int = DEFAULT_MAX_RUN_S
    log_retention_days: int = 30

    def __post_init__(self) -> None:
        if isinstance(self.max_run_s, bool) or not isinstance(self.max_run_s, int) or self.max_run_s < 0:
            raise ValueError(f"Expected `{MAX_RUN_ENV}` to be a number of seconds (0: no limit) but got "
                             f"{self.max_run_s!r}")
        if (isinstance(self.log_retention_days, bool) or not isinstance(self.log_retention_days, int)
                or self.log_retention_days < 0):
            raise ValueError(f"Expected `{LOG_RETENTION_ENV}` to be a non-negative int (days; 0 keeps every log) but "
                             f"got {self.log_retention_days!r}")
        if isinstance(self.nproc, bool) or not isinstance(self.nproc, int) or self.nproc < 1:
            raise ValueError(f"Expected `{NPROC_ENV}` to be a positive int but got {self.nproc!r}")
        if isinstance(self.max_jobs, bool) or not isinstance(self.max_jobs, int) or self.max_jobs < 1:
            raise ValueError(f"Expected `{MAX_JOBS_ENV}` to be a positive int but got {self.max_jobs!r}")
        if not isinstance(self.onnx, bool):
            raise ValueError(f"Expected `{ONNX_ENV}` to be 'true' or 'false' but got {self.onnx!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"Expected `{BACKEND_ENV}` to be one of {', '.join(BACKENDS)} but got {self.backend!r}")
        if self.backend == "kubernetes":
            if not self.backend_config or not Path(self.backend_config).is_file():
                raise ValueError(
                    f"The kubernetes backend needs `{BACKEND_CONFIG_ENV}` to name its JSON config file "
                    f"(kube-context, repository-uri, kube-job-template-path) but got {self.backend_config!r}"
                )
            if not self.tracking_uri.startswith(("http://", "https://")):
                raise ValueError(
                    f"The kubernetes backend needs `{TRACKING_URI_ENV}` set to the server's http(s):// address so "
                    f"that the job can reach it from its pod but got {self.tracking_uri!r}"
                )


@dataclass(frozen=True)
class ServerFacts:
    """What ``mlflow server`` tells its workers through ``_MLFLOW_SERVER_*`` variables (all empty in a client).

    Args:
        backend_store_uri: the server's tracking backend store.
        registry_store_uri: the server's ``--registry-store-uri`` (empty: the registry is the backend store).
        proxies_artifacts: the server proxies artifacts (``mlflow-artifacts:`` locations), so a job must be an HTTP
            client of the server.
        static_prefix: the server's ``--static-prefix``.
        sgi: the server program (``uvicorn``, ``gunicorn``, ``waitress``).
    """

    backend_store_uri: str = ""
    registry_store_uri: str = ""
    proxies_artifacts: bool = False
    static_prefix: str = ""
    sgi: str = ""


@dataclass(frozen=True)
class PluginSettings:
    """All settings of the plugin: the request policy, the launcher's settings and the server's facts.

    Args:
        policy: what files and URLs a request may reference.
        launcher: how a request's job runs.
        server: what the ``mlflow server`` process hosting the store said about itself.
        digest_key: the deployment's digest key (read by :func:`mlflow_unlearn.tracking.keys.read_digest_key`, the
            one reader), handed to each launcher and job in its environment, never in JSON or on a command line.
    """

    policy: SecurityPolicy = field(default_factory=SecurityPolicy)
    launcher: LauncherSettings = field(default_factory=LauncherSettings)
    server: ServerFacts = field(default_factory=ServerFacts)
    digest_key: DigestKey | None = field(default=None, repr=False, compare=False)

    def job_uris(self, registry_db_uri: str, tracking_uri: str | None, server_address: str = "") -> tuple[str, str]:
        """The tracking and registry URIs of a job.

        Args:
            registry_db_uri: the registry database of the store.
            tracking_uri: the tracking URI MLflow resolved for the store's process.
            server_address: the ``http://host:port`` on which the server received the current request, if any.

        Returns:
            The configured tracking URI or, when the server proxies artifacts, its own address (for both); else the
            server's backend store (or ``tracking_uri``) and the registry database.

        Raises:
            ValueError: if the server proxies artifacts, no tracking URI is configured and its address is unknown.

        Example:
            >>> PluginSettings().job_uris("sqlite:////r.db", "sqlite:////t.db")
            ('sqlite:////t.db', 'sqlite:////r.db')
        """
        job_tracking = self.launcher.tracking_uri
        if not job_tracking and self.server.proxies_artifacts:
            if not server_address:
                raise ValueError(
                    f"this server proxies artifacts, so the job must talk to it over HTTP, but its address is unknown "
                    f"outside a request; set {TRACKING_URI_ENV} to the server's http:// address"
                )
            job_tracking = server_address + self.server.static_prefix.rstrip("/")
        job_tracking = job_tracking or self.server.backend_store_uri or tracking_uri or ""
        if job_tracking.startswith(("http://", "https://")):
            return job_tracking, job_tracking
        return job_tracking or registry_db_uri, registry_db_uri

    def to_json(self) -> str:
        """The settings as one JSON string (how the store hands them to a launcher process)."""
        values = dataclasses.asdict(self)
        values.pop("digest_key")
        values["policy"]["allowed_roots"] = [str(root) for root in self.policy.allowed_roots]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PluginSettings:
        """Inverse of :meth:`to_json`; the digest key, which the JSON never holds, comes from the environment that
        :func:`mlflow_unlearn_plugins.scheduler.start_launcher` gave this process (through the one reader)."""
        values = json.loads(text)
        policy = values["policy"]
        return cls(
            policy=SecurityPolicy(allowed_roots=tuple(Path(p) for p in policy["allowed_roots"]),
                                  allow_urls=policy["allow_urls"]),
            launcher=LauncherSettings(**values["launcher"]),
            server=ServerFacts(**values["server"]),
            digest_key=read_digest_key(),
        )


def _boolean(text: str, name: str, default: bool) -> bool:
    """Yes/no text read by the project's one parser (:func:`mlflow_unlearn.data.grammar.parse_flag`); empty (or
    only spaces) means ``default``."""
    return parse_flag(name, text, what="setting") if text.strip() else default


def _positive_int(text: str, name: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"Expected `{name}` to be a positive int but got {text!r}") from None


def _seconds(text: str, name: str, default: int) -> int:
    """A number of seconds (``0`` or ``none``: no limit); empty means ``default``."""
    text = text.strip().lower()
    if not text:
        return default
    if text == "none":
        return 0
    if not text.isdigit():
        raise ValueError(f"Expected `{name}` to be a number of seconds (0 or 'none': no limit) but got {text!r}")
    return int(text)


def _retention_days(text: str) -> int:
    """Days of :data:`LOG_RETENTION_ENV` (empty: the default, 30); :class:`LauncherSettings` checks the range."""
    if not text.strip():
        return LauncherSettings.log_retention_days
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"Expected `{LOG_RETENTION_ENV}` to be a non-negative int (days; 0 keeps every log) but got "
                         f"{text!r}") from None


def visible_gpus(env: Mapping[str, str]) -> int:
    """GPUs a job on this host may use, counted without importing torch.

    ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none), else the ``/dev/nvidia<N>`` device files.

    Example:
        >>> visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}), visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"})
        (2, 0)
    """
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.split(",") if d.strip()]
        return 0 if not ids or ids[0].strip().startswith("-") else len(ids)
    return sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[len("nvidia"):].isdigit())


def default_max_jobs(env: Mapping[str, str], nproc: int = 1) -> int:
    """One job per visible GPU (``nproc`` GPUs per distributed job), else 1 on a CPU-only host.

    Example:
        >>> default_max_jobs({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, nproc=2)
        2
        >>> default_max_jobs({"CUDA_VISIBLE_DEVICES": ""})
        1
    """
    return max(1, visible_gpus(env) // max(1, nproc))


def _read_policy(env: Mapping[str, str]) -> SecurityPolicy:
    roots = tuple(Path(p) for p in env.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p.strip())
    return SecurityPolicy(allowed_roots=roots, allow_urls=_boolean(env.get(ALLOW_URLS_ENV, ""), ALLOW_URLS_ENV, False))


def _read_server(env: Mapping[str, str], tracking_uri: str) -> ServerFacts:
    facts = ServerFacts(
        backend_store_uri=env.get(_SERVER_BACKEND_URI_ENV, ""),
        registry_store_uri=env.get(_SERVER_REGISTRY_URI_ENV, ""),
        proxies_artifacts=env.get(_SERVER_ARTIFACT_ROOT_ENV, "").startswith(_PROXIED_ARTIFACTS),
        static_prefix=env.get(_SERVER_STATIC_PREFIX_ENV, ""),
        sgi=env.get(_SERVER_SGI_ENV, ""),
    )
    if facts.proxies_artifacts and not tracking_uri and facts.sgi not in ("", "uvicorn"):
        # Under uvicorn the request's local socket address is the server's; other servers may take it from the
        # client's Host header, which must not choose where a job downloads a model from.
        raise ValueError(f"This server proxies artifacts and runs under {facts.sgi}: set `{TRACKING_URI_ENV}` to "
                         "the server's http:// address so that unlearning jobs can reach it")
    return facts


def read_webhook_secret(environ: Mapping[str, str] | None = None) -> str:
    """The shared secret of ``mlflow-unlearn-serve``'s webhook (:data:`WEBHOOK_SECRET_ENV`; empty if unset)."""
    return (os.environ if environ is None else environ).get(WEBHOOK_SECRET_ENV, "")


def read_settings(environ: Mapping[str, str] | None = None) -> PluginSettings:
    """Read every setting of the plugin from ``environ`` (default: this process's environment), once.

    Raises:
        ValueError: for an invalid ``MLFLOW_UNLEARN_*`` value; the message names the variable and how to fix it.
    """
    env = os.environ if environ is None else environ
    nproc = _positive_int(env.get(NPROC_ENV, "1"), NPROC_ENV)
    max_jobs = env.get(MAX_JOBS_ENV, "").strip()
    launcher = LauncherSettings(
        backend=env.get(BACKEND_ENV, "local").strip() or "local",
        backend_config=env.get(BACKEND_CONFIG_ENV, ""),
        tracking_uri=env.get(TRACKING_URI_ENV, ""),
        device=env.get(DEVICE_ENV, "auto"),
        nproc=nproc,
        docker_image=env.get(DOCKER_IMAGE_ENV, "mlflow-unlearn:latest"),
        log_dir=env.get(LOG_DIR_ENV, "") or os.path.join(tempfile.gettempdir(), "mlflow-unlearn-logs"),
        max_jobs=_positive_int(max_jobs, MAX_JOBS_ENV) if max_jobs else default_max_jobs(env, nproc),
        onnx=_boolean(env.get(ONNX_ENV, ""), ONNX_ENV, True),
        max_run_s=_seconds(env.get(MAX_RUN_ENV, ""), MAX_RUN_ENV, DEFAULT_MAX_RUN_S),
        log_retention_days=_retention_days(env.get(LOG_RETENTION_ENV, "")),
    )
    return PluginSettings(policy=_read_policy(env), launcher=launcher, server=_read_server(env, launcher.tracking_uri),
                          digest_key=read_digest_key(env))
