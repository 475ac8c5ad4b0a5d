"""Hypothesis strategies for anyone who implements or fuzzes a peer of this protocol.

Installed with the ``testing`` extra (``pip install "rtc-worker[testing]"``); the
runtime packages never import it. Everything here is sans-IO.

* valid messages of every type and their frames (:func:`messages`, :func:`frames`,
  one strategy per message type: :data:`MESSAGE_STRATEGIES`);
* frames a conforming peer must refuse, with the code (:func:`malformed_frames`,
  :func:`malformed_frames_with_codes`);
* whole valid exchanges, from a client and a worker connection pumped against each
  other (:func:`exchanges`, :class:`ConnectionPair`);
* the JSON signaling frames (:func:`signaling_frames` and friends).

Example::

    from hypothesis import given
    from protocol import decode, encode
    from protocol.testing import malformed_frames, messages

    @given(messages())
    def test_round_trip(message):
        assert decode(encode(message)) == message
"""

from protocol.testing.exchange import C2W, EXCHANGE_KINDS, W2C, Direction, Exchange, exchanges
from protocol.testing.malformed import malformed_frames, malformed_frames_with_codes
from protocol.testing.pair import ConnectionPair, SimulatedStore, SimulatedWorld
from protocol.testing.signaling import (
    client_signaling_frames,
    json_values,
    malformed_signaling_frames,
    malformed_signaling_frames_with_codes,
    peer_ids,
    server_signaling_frames,
    signaling_frames,
)
from protocol.testing.text import file_names, free_text, job_ids, paths, sha256_hex
from protocol.testing.valid import (
    MESSAGE_STRATEGIES,
    chunks,
    client_messages,
    end_of_files,
    file_cancels,
    file_exists_messages,
    file_metas,
    file_progresses,
    file_ready_messages,
    file_received_messages,
    frames,
    job_cancels,
    job_completes,
    job_failed_messages,
    job_id_messages,
    job_logs,
    job_metrics,
    job_starts,
    legacy_file_metas,
    messages,
    path_errors,
    path_validated_messages,
    protocol_error_frames,
    results_requests,
    results_stored_messages,
    results_via_storage_messages,
    shared_input_paths,
    shared_output_paths,
    transfer_errors,
    worker_messages,
)

__all__ = [
    "C2W",
    "EXCHANGE_KINDS",
    "MESSAGE_STRATEGIES",
    "W2C",
    "ConnectionPair",
    "Direction",
    "Exchange",
    "SimulatedStore",
    "SimulatedWorld",
    "chunks",
    "client_messages",
    "client_signaling_frames",
    "end_of_files",
    "exchanges",
    "file_cancels",
    "file_exists_messages",
    "file_metas",
    "file_names",
    "file_progresses",
    "file_ready_messages",
    "file_received_messages",
    "frames",
    "free_text",
    "job_cancels",
    "job_completes",
    "job_failed_messages",
    "job_id_messages",
    "job_ids",
    "job_logs",
    "job_metrics",
    "job_starts",
    "json_values",
    "legacy_file_metas",
    "malformed_frames",
    "malformed_frames_with_codes",
    "malformed_signaling_frames",
    "malformed_signaling_frames_with_codes",
    "messages",
    "path_errors",
    "path_validated_messages",
    "paths",
    "peer_ids",
    "protocol_error_frames",
    "results_requests",
    "results_stored_messages",
    "results_via_storage_messages",
    "server_signaling_frames",
    "sha256_hex",
    "shared_input_paths",
    "shared_output_paths",
    "signaling_frames",
    "transfer_errors",
    "worker_messages",
]
