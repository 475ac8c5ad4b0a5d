"""WebRTC peer worker for shared-storage transfers.

Importing this package is cheap on purpose: it does not import aiortc, so the
signaling server can use :mod:`rtc_worker.storage` without loading the WebRTC
stack.
"""

from importlib.metadata import version

__version__ = version("rtc-worker")
"""The installed version (one source: pyproject.toml)."""
