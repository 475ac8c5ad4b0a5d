"""WebRTC peer worker for shared-storage transfers.

Importing this package is cheap on purpose: it does not import aiortc, so the
signaling server can use :mod:`rtc_worker.storage` without loading the WebRTC
stack.
"""

__version__ = "0.1.0"
