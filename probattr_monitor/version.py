"""The package version, read from the installed metadata: ``pyproject.toml`` is its one source."""

import importlib.metadata

__version__ = importlib.metadata.version("probattr-monitor")
