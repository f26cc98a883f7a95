"""The package's version, as the server sees it in ``User-Agent``."""

__version__ = "0.1.0"

USER_AGENT = f"agentwire-python/{__version__}"
