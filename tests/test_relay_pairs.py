"""A CLIENT sender and a WORKER receiver pumped against each other on the relay road
(protocol.testing.pair with its in-memory relay objects, real AES-GCM): drawn files,
part sizes, resume offsets, fetch failures at random offsets (every RelayEndCode),
failed uploads and tampered objects. Whatever happens, with a fallback the transfer
ends with the whole file verified; every byte the worker wrote landed at its own offset
(no chunk went backwards or was skipped); the channel always continued from the
verified offset; nothing unauthenticated was written. Without a fallback the transfer
fails with the relay road's code and the verified prefix is kept for a resume."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import events as ev
from protocol.errors import RelayEndCode
from protocol.limits import RELAY_MIN_CHUNK_BYTES
from protocol.relay_events import RoadChanged
from protocol.roads import Road
from protocol.testing.pair import ConnectionPair
from protocol.testing.text import sha256_of

K = RELAY_MIN_CHUNK_BYTES
QUICK = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def file_of(size: int, seed: int) -> bytes:
    """Bytes that never repeat at a chunk distance (a misplaced chunk cannot match)."""
    return random.Random(seed).randbytes(size)


def landed_where_they_belong(pair: ConnectionPair, data: bytes) -> None:
    for at, written in pair.world.store.writes:
        assert written == data[at : at + len(written)], f"a write at {at} is not the file's"


@st.composite
def runs(draw: st.DrawFn) -> dict[str, object]:
    size = draw(st.integers(1, 6 * K + 100))
    boundaries = sorted({*range(0, size, K)})
    return {
        "size": size,
        "seed": draw(st.integers(0, 2**16)),
        "part_chunks": draw(st.integers(1, 3)),
        "resume": draw(st.sampled_from([0, 0, 0, 1, K - 1, K, K + 17])),
        "fetch_failures": draw(
            st.dictionaries(
                st.sampled_from(boundaries), st.sampled_from(list(RelayEndCode)), max_size=3
            )
        ),
        "upload_failures": draw(st.sets(st.sampled_from(boundaries), max_size=2)),
        "tamper": draw(st.sets(st.integers(1, 8).map(lambda n: f"{n:032x}"), max_size=2)),
    }


def pair_for(run: dict[str, object], data: bytes) -> ConnectionPair:
    pair = ConnectionPair()
    relay = pair.relay
    relay.part_chunks = int(run["part_chunks"])  # type: ignore[call-overload]
    relay.fetch_failures = dict(run["fetch_failures"])  # type: ignore[call-overload]
    relay.upload_failures = set(run["upload_failures"])  # type: ignore[call-overload]
    relay.tamper = set(run["tamper"])  # type: ignore[call-overload]
    resume = min(int(run["resume"]), len(data) - 1)  # type: ignore[call-overload]
    if resume:  # an earlier transfer of this principal left a partial
        pair.world.store.partials[sha256_of(data)] = data[:resume]
    return pair


@QUICK
@given(run=runs())
def test_with_a_fallback_the_whole_file_is_always_verified(run: dict[str, object]) -> None:
    data = file_of(int(run["size"]), int(run["seed"]))  # type: ignore[call-overload]
    pair = pair_for(run, data)
    pair.upload(data, "in.bin", road=Road.RELAY, fallback=True)
    (ended,) = [e for e in pair.events if isinstance(e, ev.SendEnded)]
    assert ended.status == "received", ended
    assert pair.world.store.objects[sha256_of(data)] == data
    landed_where_they_belong(pair, data)
    changes = [e for e in pair.events if isinstance(e, RoadChanged)]
    assert len(changes) <= 1  # one relay session, then the channel
    frames = [f for _, f in pair.frames if isinstance(f, str)]
    if changes:  # the channel went on from the verified offset, never from zero
        (change,) = changes
        assert (change.from_road, change.to_road) == (Road.RELAY, Road.CHANNEL)
        assert f"::{change.offset}::{change.code}::" in next(
            f for f in frames if f.startswith("RELAY_ENDED::")
        )
        channel = [at for at, _ in pair.world.store.writes if at >= change.offset]
        assert not channel or channel[0] == change.offset
        assert "END_OF_FILE" in frames
    else:
        assert "END_OF_FILE" not in frames or len(data) <= int(run["resume"])  # type: ignore[call-overload]
    # Every relay object the worker verified was deleted; none it did not verify was.
    for upload_id in pair.relay.deleted:
        assert upload_id not in pair.relay.objects


@QUICK
@given(run=runs())
def test_without_a_fallback_a_relay_failure_fails_with_its_code(run: dict[str, object]) -> None:
    data = file_of(int(run["size"]), int(run["seed"]))  # type: ignore[call-overload]
    pair = pair_for(run, data)
    pair.upload(data, "in.bin", road=Road.RELAY, fallback=False)
    (ended,) = [e for e in pair.events if isinstance(e, ev.SendEnded)]
    landed_where_they_belong(pair, data)
    ends = [f for _, f in pair.frames if isinstance(f, str) and f.startswith("RELAY_ENDED::")]
    if ended.status == "received":
        assert not ends
        assert pair.world.store.objects[sha256_of(data)] == data
        return
    (relay_ended,) = ends
    offset, code = relay_ended.split("::")[2:4]
    assert (ended.status, ended.code) == ("failed", code)
    assert ("C->W", "FILE_CANCEL") in pair.frames
    kept = pair.world.store.partials[sha256_of(data)]
    assert kept == data[: int(offset)]  # the verified prefix, kept for a resume
    assert not [e for e in pair.events if isinstance(e, RoadChanged)]


def test_a_tampered_object_is_refused_and_the_channel_brings_the_rest() -> None:
    data = file_of(5 * K + 3, 1)
    pair = ConnectionPair()
    pair.relay.tamper = {f"{2:032x}"}  # the second part's first ciphertext byte flipped
    pair.upload(data, "in.bin", road=Road.RELAY)
    ended = next(f for _, f in pair.frames if isinstance(f, str) and f.startswith("RELAY_ENDED"))
    assert ended.split("::")[2:4] == [str(2 * K), "RELAY_CHUNK_INVALID"]
    assert pair.world.store.objects[sha256_of(data)] == data
    landed_where_they_belong(pair, data)
    assert pair.relay.deleted == [f"{1:032x}"]


def test_a_relay_transfer_without_failures_moves_no_byte_on_the_channel() -> None:
    data = file_of(3 * K + 5, 2)
    pair = ConnectionPair()
    pair.upload(data, "in.bin", road=Road.RELAY)
    assert not [f for _, f in pair.frames if isinstance(f, bytes)]
    assert pair.relay.objects == {} and len(pair.relay.deleted) == 2
    assert pair.world.store.objects[sha256_of(data)] == data
    assert pair.worker.worker is not None and pair.worker.worker.input_sha256 == sha256_of(data)
    assert pair.client.job.worker == "HAVE_FILE"  # the held file is the next job's input


def test_a_worker_without_the_relay_road_sends_the_client_to_the_channel() -> None:
    from protocol.connection import Capabilities

    data = file_of(2 * K + 9, 4)
    pair = ConnectionPair(capabilities=Capabilities(relay_road=False))
    pair.upload(data, "in.bin", road=Road.RELAY)
    ended = next(f for _, f in pair.frames if isinstance(f, str) and f.startswith("RELAY_ENDED"))
    assert ended.split("::")[2:] == ["0", "RELAY_UNREACHABLE", "no relay road on this receiver"]
    assert pair.world.store.objects[sha256_of(data)] == data
    assert pair.world.store.writes[0][0] == 0  # everything by the channel, from 0


def test_an_attacker_cannot_point_the_worker_at_a_url_or_at_another_file() -> None:
    """The attacker's steps: open a transfer of its own file on the worker, then send
    RELAY_PART frames naming a URL instead of an upload id, another file's sha256, bytes
    the worker already holds, and a hundred parts at once. Each is refused with a code
    (or ends the relay road) and the worker fetches nothing it was not asked by the
    protocol to fetch."""
    from protocol.relay_events import FetchRelayPart, HaltRelay
    from protocol.relay_messages import RelayPart
    from tests.protocol_helpers import (
        BIG_META,
        BIG_SHA,
        feed,
        open_receive,
        ready_at_zero,
        sends,
        worker,
    )

    conn = worker()
    ready_at_zero(conn, open_receive(conn, BIG_META))
    key, prefix = "A" * 43, "A" * 10
    url = "https://evil.example/x"
    frames = [
        f"RELAY_PART::{BIG_SHA}::0::4096::4096::{key}::{prefix}::{url}::t",  # a URL
        f"RELAY_PART::{BIG_SHA}::0::4096::4096::{key}::{prefix}::../../{'0' * 26}::t",
        f"RELAY_PART::{'0' * 64}::0::4096::4096::{key}::{prefix}::{'ab' * 16}::t",  # another file
        f"RELAY_PART::{BIG_SHA}::4096::904::4096::{key}::{prefix}::{'ab' * 16}::t",  # a gap
    ]
    for frame in frames:
        out = feed(conn, frame)
        (refusal,) = sends(out)
        assert refusal.code == "MALFORMED_FRAME"  # type: ignore[attr-defined]
        assert not [o for o in out if isinstance(o, FetchRelayPart)]
    # A flood of parts: the worker holds at most max_relay_parts, then ends the road.
    from protocol.transfer_messages import FileMeta

    conn = worker()
    huge = FileMeta("huge.bin", 64 * K, BIG_SHA, 4)
    ready_at_zero(conn, open_receive(conn, huge))
    flood = [
        RelayPart(BIG_SHA, i * K, K, K, bytes(32), bytes(7), f"{i:032x}", "t") for i in range(20)
    ]
    outputs = [o for part in flood for o in feed(conn, part)]
    assert len([o for o in outputs if isinstance(o, FetchRelayPart)]) == 1
    assert [o for o in outputs if isinstance(o, HaltRelay)] == [HaltRelay(1)]
    assert conn.receiver.state == "HALTING"
    assert len(conn.receiver.relay.queue) == conn.limits.max_relay_parts - 1
