// A channel's recordings: the saved segments of a time range on a timeline (gaps and
// discontinuities marked), played with hls.js from the platform's generated playlist,
// and the range as one file to download. ?at=EPOCH (an alarm's link) plays that moment.
"use strict";

C.header("devices");
const device = C.param("device") || "";
const channel = Number(C.param("channel") || 0);
const base = `/console/api/recordings/${encodeURIComponent(device)}/${channel}`;
const video = document.getElementById("video");
const timeline = document.getElementById("timeline");
let range = { from: 0, to: 0 };
let segments = [];
let hls = null;
let playlistStart = 0; // epoch of the playlist's first segment (video time 0)

document.getElementById("title").textContent = `${device}, channel ${channel}: recordings`;

// datetime-local works in local time without a zone: convert by hand.
function toLocalInput(epoch) {
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const fromLocalInput = (value) => new Date(value).getTime() / 1000;

function pct(t) { return (100 * (t - range.from)) / (range.to - range.from); }

function renderTimeline(data) {
  const parts = [];
  for (const g of data.gaps || []) {
    parts.push(C.el("div", { class: "gap", title: `gap ${C.fmtTime(g.start)} – ${C.fmtTime(g.end)}`,
      style: `left:${pct(g.start)}%;width:${Math.max(0.2, pct(g.end) - pct(g.start))}%` }));
  }
  for (const s of segments) {
    parts.push(C.el("div", { class: "seg", title: `${s.name}: ${C.fmtTime(s.start)}, ${s.duration.toFixed(1)} s`,
      style: `left:${pct(s.start)}%;width:${Math.max(0.2, pct(s.start + s.duration) - pct(s.start))}%` }));
    if (s.discontinue) {
      parts.push(C.el("div", { class: "disc", title: "discontinuity", style: `left:${pct(s.start)}%` }));
    }
  }
  parts.push(C.el("div", { class: "cursor", id: "cursor", style: "display:none" }));
  timeline.replaceChildren(...parts);
  document.getElementById("axis-from").textContent = C.fmtTime(range.from);
  document.getElementById("axis-to").textContent = C.fmtTime(range.to);
  const total = segments.reduce((a, s) => a + s.duration, 0);
  document.getElementById("summary").textContent = segments.length
    ? `${segments.length} segments, ${total.toFixed(1)} s recorded, ${(data.gaps || []).length} gaps`
    : "Nothing recorded in this range.";
}

async function load() {
  const q = `from=${Math.floor(range.from)}&to=${Math.ceil(range.to)}`;
  document.getElementById("download").href = `${base}/download?${q}`;
  try {
    const data = await C.api(`${base}?${q}`);
    segments = [...data.segments].sort((a, b) => a.start - b.start);
    renderTimeline(data);
    return true;
  } catch (err) {
    C.message(document.getElementById("result"), err.message, false);
    return false;
  }
}

// Video time of the moment t: the playlist is the range's segments back to back.
function offsetOf(t) {
  let sum = 0;
  for (const s of segments) {
    if (t < s.start) return sum; // in a gap: the next recorded moment
    if (t < s.start + s.duration) return sum + (t - s.start);
    sum += s.duration;
  }
  return Math.max(0, sum - 0.5);
}
// ... and back: the moment a video time shows.
function momentOf(offset) {
  let sum = 0;
  for (const s of segments) {
    if (offset < sum + s.duration) return s.start + (offset - sum);
    sum += s.duration;
  }
  return segments.length ? segments[segments.length - 1].start + segments[segments.length - 1].duration : range.from;
}

function play(t) {
  if (!segments.length) return;
  const offset = offsetOf(t);
  const src = `${base}/index.m3u8?from=${Math.floor(range.from)}&to=${Math.ceil(range.to)}`;
  playlistStart = segments[0].start;
  const go = () => {
    video.currentTime = offset;
    const p = video.play();
    if (p && p.catch) p.catch(() => {});
  };
  if (hls) { hls.destroy(); hls = null; }
  if (window.Hls && Hls.isSupported()) {
    hls = new Hls({ enableWorker: false });
    hls.on(Hls.Events.ERROR, (_e, data) => {
      if (data.fatal) C.message(document.getElementById("result"), `playback: ${data.type} ${data.details}`, false);
    });
    hls.once(Hls.Events.MANIFEST_PARSED, go);
    hls.loadSource(src);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = src;
    video.addEventListener("loadedmetadata", go, { once: true });
  } else {
    C.message(document.getElementById("result"), "This browser cannot play HLS (/console/vendor/hls.js missing?).", false);
  }
}

video.addEventListener("timeupdate", () => {
  if (!segments.length) return;
  const t = momentOf(video.currentTime);
  document.getElementById("position").textContent = `showing ${C.fmtTime(t)}`;
  const cursor = document.getElementById("cursor");
  if (cursor) { cursor.style.display = ""; cursor.style.left = `${pct(t)}%`; }
});

timeline.addEventListener("click", (e) => {
  const box = timeline.getBoundingClientRect();
  play(range.from + ((e.clientX - box.left) / box.width) * (range.to - range.from));
});

document.getElementById("show").onclick = async () => {
  const from = fromLocalInput(document.getElementById("from").value);
  const to = fromLocalInput(document.getElementById("to").value);
  if (!(to > from)) { C.message(document.getElementById("result"), "From must be before To.", false); return; }
  range = { from, to };
  await load();
};

(async () => {
  const now = Date.now() / 1000;
  const at = C.param("at") ? Number(C.param("at")) : null;
  const from = C.param("from") ? Number(C.param("from")) : (at ? at - 60 : now - 3600);
  const to = C.param("to") ? Number(C.param("to")) : (at ? at + 120 : now);
  range = { from, to };
  document.getElementById("from").value = toLocalInput(from);
  document.getElementById("to").value = toLocalInput(to);
  if (await load() && at !== null) play(at);
})();
