"""The ``mlflow.model_registry_store`` entry points of ``unlearn+<dialect>`` URIs (``setup.cfg``).

MLflow imports every entry point of that group in each process that builds a registry store, whatever the URI's
scheme: a job or a client talking to a server over HTTP loads them too. The plugin's store imports MLflow's
SQLAlchemy store (0.85 s of CPU per process, measured), so the entry point is this module's builder, which imports the
store only when an ``unlearn+`` URI is used.
"""

from __future__ import annotations

from typing import Any


def unlearn_registry_store(store_uri: str, tracking_uri: str | None = None) -> Any:
    """The plugin's store (:class:`.registry_store.UnlearnRegistryStore`) for ``store_uri``; MLflow passes both URIs
    by name."""
    from mlflow_unlearn_plugins.registry_store import UnlearnRegistryStore

    return UnlearnRegistryStore(store_uri=store_uri, tracking_uri=tracking_uri)
