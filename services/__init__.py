"""ragstream's stage services, their shared runtime and the `ragstream` CLI."""

__version__ = "0.1.0"
