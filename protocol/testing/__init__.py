"""Hypothesis strategies for anyone who implements or fuzzes a peer of this protocol.

Installed with the ``testing`` extra (``pip install "rtc-worker[testing]"``); the
runtime packages never import it. Everything here is sans-IO.

* valid messages of every type and their frames (:func:`messages`, :func:`frames`,
  one strategy per message type: :data:`MESSAGE_STRATEGIES`);
* the relay road's frames, secrets and part plans, and RELAY_* frames to refuse
  (:mod:`protocol.testing.relay`);
* frames a conforming peer must refuse, with the code (:func:`malformed_frames`,
  :func:`malformed_frames_with_codes`);
* whole valid exchanges, from a client and a worker connection pumped against each
  other (:func:`exchanges`, :class:`ConnectionPair`);
* the JSON signaling frames (:func:`signaling_frames` and friends);
* Ed25519 keys from seeds and handshake configurations (:class:`SeedSigner`,
  :func:`worker_auth`, :func:`client_auth`).

Example::

    from hypothesis import given
    from protocol import decode, encode
    from protocol.testing import malformed_frames, messages

    @given(messages())
    def test_round_trip(message):
        assert decode(encode(message)) == message
"""

from protocol.testing import exchange, keys, malformed, pair, relay, signaling, valid
from protocol.testing.exchange import *  # noqa: F403
from protocol.testing.keys import *  # noqa: F403
from protocol.testing.malformed import *  # noqa: F403
from protocol.testing.pair import *  # noqa: F403
from protocol.testing.relay import *  # noqa: F403
from protocol.testing.signaling import *  # noqa: F403
from protocol.testing.text import file_names, free_text, job_ids, paths, sha256_hex
from protocol.testing.valid import *  # noqa: F403

__all__ = ["file_names", "free_text", "job_ids", "paths", "sha256_hex"]
__all__ += exchange.__all__
__all__ += keys.__all__
__all__ += malformed.__all__
__all__ += pair.__all__
__all__ += relay.__all__
__all__ += signaling.__all__
__all__ += valid.__all__
