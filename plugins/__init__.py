"""MLflow plugin glue of mlflow-unlearn, installed as ``mlflow_unlearn_plugins``.

``registry_store``: the ``unlearn+<dialect>`` model-registry store (entry points in ``setup.cfg``);
``request``: parsing and security checks of request tags; ``settings``: every setting, read once; ``ledger``: the
requests' durable state; ``launcher``: the detached process that prepares a request
(:func:`mlflow_unlearn.tracking.plan.prepare`) and runs it as an MLflow Projects job. See docs/registry_plugin.md.
"""
