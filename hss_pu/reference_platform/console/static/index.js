// The device list: the API's list once, then every change as it happens (SSE).
"use strict";

C.header("devices");
const devices = new Map();
const tbody = document.querySelector("#devices tbody");

function channelCell(d) {
  if (!d.channels.length) return C.el("span", { class: "muted" }, "none reported");
  return d.channels.map((c) => {
    const id = encodeURIComponent(d.id);
    return C.el("div", { class: "channel", "data-channel": c.channel },
      `ch${c.channel} `,
      C.el("span", { class: "badge" + (c.state === 1 ? " ok" : "") }, C.CHANNEL_STATES[c.state] || c.state),
      C.alarmBits(c.alarm).map((t) => C.el("span", { class: "badge alarm" }, C.alarmName(t))),
      c.record_session ? C.el("span", { class: "badge rec" }, "recording") : null,
      " ",
      C.el("a", { href: `/console/live?device=${id}&channel=${c.channel}` }, "live"), " · ",
      C.el("a", { href: `/console/recordings?device=${id}&channel=${c.channel}` }, "recordings"));
  });
}

function row(d) {
  const battery = d.battery ? `${d.battery.battery} %` : "—";
  return C.el("tr", { "data-device": d.id, class: d.alarms_active ? "alarm" : null },
    C.el("td", {}, C.el("a", { href: `/console/device?id=${encodeURIComponent(d.id)}` }, d.id)),
    C.el("td", {},
      C.el("span", { class: d.online ? "online" : "offline" }, d.online ? "online" : (d.sleeping ? "asleep" : "offline")),
      d.alarms_active ? C.el("div", {}, C.el("span", { class: "badge alarm" }, "alarm")) : null),
    C.el("td", {}, d.hardware_model || "—", C.el("div", { class: "muted" }, d.firmware_model || "")),
    C.el("td", { class: "battery" }, battery),
    C.el("td", {}, channelCell(d)),
    C.el("td", { class: "seen", "data-seen": d.last_seen ?? "" }, C.ago(d.last_seen)));
}

function render() {
  tbody.replaceChildren(...[...devices.values()].sort((a, b) => a.id.localeCompare(b.id)).map(row));
  document.getElementById("empty").hidden = devices.size > 0;
}

async function load() {
  try {
    const data = await C.api("/console/api/devices");
    for (const d of data.devices) devices.set(d.id, d);
    render();
  } catch (err) {
    C.message(document.getElementById("error"), err.message, false);
  }
}

load();
C.events({
  device: (d) => { devices.set(d.id, d); render(); },
  state: C.setLiveState,
});
// "12 s ago" keeps counting between events.
setInterval(() => {
  for (const td of tbody.querySelectorAll("td.seen")) {
    const v = td.dataset.seen;
    td.textContent = C.ago(v === "" ? null : Number(v));
  }
}, 5000);
