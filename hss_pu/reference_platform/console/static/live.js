// The live view: the MPEG-TS the platform receives over SRT, relayed as is over a
// WebSocket and played by mpegts.js (Media Source Extensions), kept close to the live
// edge. Opening the page starts the device's push; leaving it lets the platform stop it.
"use strict";

C.header("devices");
const device = C.param("device") || "";
const channel = Number(C.param("channel") || 0);
const video = document.getElementById("video");
const statusLine = document.getElementById("status");
const q = `device=${encodeURIComponent(device)}&channel=${channel}`;
let player = null;
let retry = null;

document.getElementById("title").textContent = `${device}, channel ${channel}: live`;
document.getElementById("device-link").href = `/console/device?id=${encodeURIComponent(device)}`;
document.getElementById("recordings-link").href = `/console/recordings?${q}`;

function url() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/console/api/live/${encodeURIComponent(device)}/${channel}`;
}

function stop() {
  if (!player) return;
  player.pause();
  player.unload();
  player.detachMediaElement();
  player.destroy();
  player = null;
}

function again(why) {
  statusLine.textContent = `${why}; trying again…`;
  stop();
  clearTimeout(retry);
  retry = setTimeout(start, 2000);
}

function start() {
  if (!window.mpegts || !mpegts.isSupported()) {
    C.message(document.getElementById("result"),
      "This browser cannot play MPEG-TS (no Media Source Extensions), or /console/vendor/mpegts.js is missing.", false);
    return;
  }
  player = mpegts.createPlayer(
    { type: "mpegts", isLive: true, url: url() },
    {
      enableWorker: false,
      enableStashBuffer: false, // hand every byte to the decoder at once: low delay
      lazyLoad: false,
      // Close to the live edge, with a little margin (measured: bench/console.py, and
      // docs/benchmarks.md "Web console"): a viewer joins at the last key frame, up to a
      // GOP behind; a jump catches up past 0.6 s buffered, a 1.1x playback rate past
      // 0.3 s, down to 0.2 s (enough to ride out a short hiccup without a stall).
      liveBufferLatencyChasing: true,
      liveBufferLatencyMaxLatency: 0.6,
      liveBufferLatencyMinRemain: 0.2,
      liveSync: true,
      liveSyncMaxLatency: 0.3,
      liveSyncTargetLatency: 0.2,
      liveSyncPlaybackRate: 1.1,
    });
  player.on(mpegts.Events.ERROR, (type, detail) => again(`${type}: ${detail}`));
  player.on(mpegts.Events.LOADING_COMPLETE, () => again("the stream ended"));
  player.on(mpegts.Events.STATISTICS_INFO, (s) => {
    const end = video.buffered.length ? video.buffered.end(video.buffered.length - 1) : 0;
    const behind = Math.max(0, end - video.currentTime).toFixed(2);
    statusLine.textContent =
      `playing: ${video.videoWidth}×${video.videoHeight}, ${Math.round(s.speed || 0)} KB/s, ` +
      `${s.decodedFrames || 0} frames (${s.droppedFrames || 0} dropped), ${behind} s buffered`;
  });
  player.attachMediaElement(video);
  player.load();
  const playing = player.play();
  if (playing && playing.catch) playing.catch(() => { /* autoplay refused: the controls remain */ });
  statusLine.textContent = "connecting…";
}

window.addEventListener("pagehide", stop);
start();
