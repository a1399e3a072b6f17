"""A second, independent WebRTC peer for Parley's end-to-end tests, built on aiortc.

Calls an agent the WHIP way (POST of an SDP offer to /v1/agents/{public_id}/voice), speaks a
WAV file into the call (aiortc encodes it as Opus), opens a `captions` data channel, and records
the agent's audio as 16 kHz mono 16-bit WAV. It hangs up (DELETE of the answer's Location) once
the agent has answered the caller (an agent caption after the caller's final caption) and six
more seconds of its audio have been recorded or it has gone quiet for two seconds (the agent sends
audio only while it speaks), or after TIMEOUT seconds.

Usage: aiortc_call.py BASE_URL PUBLIC_ID SPEECH_WAV REPLY_WAV TIMEOUT_SECONDS
Prints one JSON object: {"status", "location", "captions", "hang_up_status", "reply_seconds",
"answer_from_seconds"}: the recording's length, and where in it the agent's answer began (when
the caller's final caption arrived).
"""

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
import wave

import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

BASE, PUBLIC_ID, SPEECH, REPLY, TIMEOUT = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
RATE = 16_000


def http(method, url, body=None, content_type=None):
    request = urllib.request.Request(url, data=body, method=method)
    if content_type:
        request.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


async def record(track, writer, recorded):
    """Writes the agent's audio, resampled to 16 kHz mono, until the track ends."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            data = bytes(out.planes[0])[: out.samples * 2]
            writer.writeframes(data)
            recorded["samples"] += out.samples
            recorded["at"] = time.monotonic()


async def main():
    connection = RTCPeerConnection()
    player = MediaPlayer(SPEECH)
    connection.addTrack(player.audio)
    captions = []
    channel = connection.createDataChannel("captions")

    @channel.on("message")
    def on_message(message):
        captions.append(json.loads(message))

    writer = wave.open(REPLY, "wb")
    writer.setnchannels(1)
    writer.setsampwidth(2)
    writer.setframerate(RATE)
    recorded = {"samples": 0, "at": time.monotonic()}
    recorders = []

    @connection.on("track")
    def on_track(track):
        if track.kind == "audio":
            recorders.append(asyncio.ensure_future(record(track, writer, recorded)))

    await connection.setLocalDescription(await connection.createOffer())
    loop = asyncio.get_running_loop()
    status, headers, body = await loop.run_in_executor(
        None,
        http,
        "POST",
        f"{BASE}/v1/agents/{PUBLIC_ID}/voice",
        connection.localDescription.sdp.encode(),
        "application/sdp",
    )
    result = {"status": status, "captions": captions}
    if status != 201:
        result["problem"] = body
        await connection.close()
        print(json.dumps(result))
        return
    location = headers.get("Location") or headers.get("location")
    result["location"] = location
    await connection.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    deadline = time.monotonic() + TIMEOUT
    answered_at = None
    heard_at = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        heard = [index for index, c in enumerate(captions) if c.get("speaker") == "caller" and c.get("final")]
        if heard and heard_at is None:
            heard_at = recorded["samples"]
        if heard and answered_at is None:
            if any(c.get("speaker") == "agent" for c in captions[heard[0] + 1 :]):
                answered_at = recorded["samples"]
        # Six seconds of the answer's audio after its first caption, or the whole answer (the
        # agent sends audio only while it speaks), then hang up.
        if answered_at is not None:
            if recorded["samples"] >= answered_at + 6 * RATE:
                break
            if recorded["samples"] > answered_at and time.monotonic() - recorded["at"] > 2.0:
                break
        if any(c.get("type") == "ended" for c in captions):
            break
    hang_up, _, _ = await loop.run_in_executor(None, http, "DELETE", f"{BASE}{location}")
    result["hang_up_status"] = hang_up
    # The node's last message ("ended") arrives on the data channel before it closes.
    for _ in range(50):
        if any(c.get("type") == "ended" for c in captions):
            break
        await asyncio.sleep(0.1)
    await connection.close()
    for recorder in recorders:
        recorder.cancel()
    writer.close()
    result["reply_seconds"] = recorded["samples"] / RATE
    result["answer_from_seconds"] = None if heard_at is None else heard_at / RATE
    print(json.dumps(result))


asyncio.run(main())
