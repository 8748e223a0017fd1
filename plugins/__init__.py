"""MLflow plugin glue of mlflow-unlearn, installed as ``mlflow_unlearn_plugins``.

``registry_store``: the ``unlearn+<dialect>`` model-registry store (entry points in ``setup.cfg``), which intercepts
the request tag and the ``Unlearn`` transition; ``webhook``: the same trigger for a stock server
(``mlflow-unlearn-serve``); ``scheduler``: submit, dispatch, recover, spawn, for both triggers; ``ledger``: the
requests' durable state in the plugin's own tables; ``mirror``: the version tags that show it; ``job`` and
``launcher``: the detached process that runs a request as an MLflow Projects job; ``preflight``: its checks before
the job (the artifact store's write probe; :func:`mlflow_unlearn.tracking.plan.prepare` in a short-lived process);
``local_job``: the job on the local backend, one process; ``watch``: the launcher's watch of a running job (and its
wait without MLflow); ``process_group``: stopping and waking (cancel, deadline); ``request``: parsing and security
checks of request tags; ``guards`` and ``errors``: what the store refuses; ``settings``: every
setting, read once; ``events``, ``metrics``, ``health`` and ``server_app``: the events each ledger change writes, the
Prometheus metrics and readiness computed from the database, and the ``mlflow.app`` entry point ``unlearn`` that
serves them; ``retention``: expired logs and old events. See docs/registry_plugin.md.
"""
