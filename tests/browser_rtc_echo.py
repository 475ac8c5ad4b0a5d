"""An aiortc peer that echoes data-channel messages, with a page that calls it: the
browser tests' check that Chromium in the namespace reaches a real aiortc peer.

``python -m tests.browser_rtc_echo`` serves, on ``127.0.0.1`` and a free port:

* ``GET /``: a page whose ``window.echo(text)`` makes an RTCPeerConnection with one data
  channel, sends its offer (after ICE gathering: aiortc does not trickle) to
  ``POST /offer``, sends ``text`` once the channel is open and resolves to
  ``{reply, localCandidates, pair}`` (the selected candidate pair from ``getStats``);
* ``POST /offer``: ``{sdp, type}`` in, the answer out.

It prints ``listening on http://127.0.0.1:PORT/`` once ready.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription

PAGE = """<!doctype html><meta charset=utf-8><title>echo</title>
<script type=module>
window.echo = async (text) => {
  const pc = new RTCPeerConnection();
  const dc = pc.createDataChannel("echo");
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
  });
  const sdp = pc.localDescription.sdp;
  const body = JSON.stringify({sdp, type: "offer"});
  const response = await fetch("/offer", {method: "POST", body});
  await pc.setRemoteDescription(await response.json());
  const reply = await new Promise((done, fail) => {
    setTimeout(() => fail(new Error("no echo in 20 s; ice " + pc.iceConnectionState)), 20000);
    dc.onopen = () => dc.send(text);
    dc.onmessage = (event) => done(event.data);
  });
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
      pair = {local: stats.get(s.localCandidateId).candidateType,
              remote: stats.get(s.remoteCandidateId).candidateType};
    }
  });
  pc.close();
  const localCandidates = sdp.split("\\r\\n").filter((l) => l.startsWith("a=candidate"));
  return {reply, pair, localCandidates};
};
window.ready = true;
</script>
"""


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def _offer(request: web.Request) -> web.Response:
    params: dict[str, Any] = await request.json()
    # No ICE servers at all: aiortc's default would ask a public STUN server.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    request.app["pcs"].add(pc)

    @pc.on("datachannel")
    def _channel(channel: RTCDataChannel) -> None:
        @channel.on("message")
        def _message(message: str | bytes) -> None:
            channel.send(message)

    await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


async def main() -> None:
    app = web.Application()
    app["pcs"] = set()
    app.router.add_get("/", _page)
    app.router.add_post("/offer", _offer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for pc in app["pcs"]:
            await pc.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
