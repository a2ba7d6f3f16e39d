"""The installed distribution's version, read once from its metadata (stated in pyproject.toml).

A leaf module, so that messages anywhere in the package can name the release without
importing the package's ``__init__``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("notifelect")
except PackageNotFoundError:  # pragma: no cover - imported from a tree that was never installed
    __version__ = "0+unknown"
