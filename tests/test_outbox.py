"""The bounded outbox of a receiving socket (signaling/outbox.py): caps on frames and
bytes, a send deadline, and what the sender is told."""

from __future__ import annotations

import asyncio

from signaling.outbox import Outbox


class Sock:
    def __init__(self, stuck: bool = False, gone: bool = False) -> None:
        self.stuck, self.gone, self.sent = stuck, gone, []  # type: ignore[var-annotated]

    async def send(self, text: str) -> bool:
        if self.stuck:
            await asyncio.Event().wait()
        if self.gone:
            return False
        self.sent.append(text)
        return True


async def send(sock: Sock, text: str) -> bool:
    return await sock.send(text)


async def test_frames_go_out_in_order() -> None:
    sock = Sock()
    outbox = Outbox(sock, send, lambda: None)
    for i in range(10):
        assert outbox.put(str(i))
    await asyncio.sleep(0.05)
    assert sock.sent == [str(i) for i in range(10)]
    await outbox.close()


async def test_a_full_outbox_refuses_and_stalls_once() -> None:
    stalls: list[int] = []
    outbox = Outbox(Sock(stuck=True), send, lambda: stalls.append(1), max_frames=3)
    assert outbox.put("x")
    await asyncio.sleep(0.01)  # in the send, forever
    assert all(outbox.put("x") for _ in range(3))  # three wait
    assert not outbox.put("x") and not outbox.put("x")
    assert stalls == [1] and outbox.waiting == 0
    big = Outbox(Sock(stuck=True), send, lambda: stalls.append(2), max_bytes=10)
    assert big.put("12345") and not big.put("1234567890a")
    assert stalls == [1, 2]
    await outbox.close()
    await big.close()


async def test_a_send_past_its_deadline_stalls_and_nacks_nothing() -> None:
    stalls: list[int] = []
    lost: list[int] = []

    async def on_lost() -> None:
        lost.append(1)

    outbox = Outbox(Sock(stuck=True), send, lambda: stalls.append(1), send_timeout_s=0.05)
    assert outbox.put("x", on_lost)  # may sit in the socket's buffer: no PEER_NOT_FOUND
    await asyncio.sleep(0.2)
    assert stalls == [1] and lost == []
    gone = Outbox(Sock(gone=True), send, lambda: stalls.append(2))
    assert gone.put("x", on_lost)  # the socket was gone: the sender is told
    await asyncio.sleep(0.05)
    assert lost == [1] and stalls == [1]
    await outbox.close()
    await gone.close()
