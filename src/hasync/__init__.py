"""hasync: file synchronization of an active/standby pair, with alarm 45641, diagnosis and fault bundles."""

__version__ = "0.1.0"
__all__ = ["__version__"]
