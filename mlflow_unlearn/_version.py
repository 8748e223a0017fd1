"""The package's version, in a module of its own: the MLflow layer records it without importing the package's
facade (which hands ``unlearn`` on to the MLflow layer: importing it from there would close a cycle)."""

__version__ = "0.1.0"
