"""cvis: vehicle-road (V2X) data edge ingestion. This package holds the CLI and process plumbing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cvis")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
