// One device: its state (live), its channels' controls, PTZ, the emulated sensors,
// status, reboot, upgrade, and the configuration document as a form. Every refusal shows
// the device's own error code and message.
"use strict";

C.header("devices");
const id = C.param("id") || "";
const idq = encodeURIComponent(id);
const result = document.getElementById("result");
let device = null;
let caps = null;
const recording = {}; // channel -> session this page started (until a Keepalive says)

document.getElementById("title").textContent = id;
document.title = `hss-pu console: ${id}`;

function say(text, ok) { C.message(result, text, ok); }

// A console call with its outcome shown; the reply, or null when it failed.
async function run(method, params, what) {
  const name = what || method;
  try {
    const r = await C.call(id, method, params);
    if (r.err) {
      say(`${name}: the device refused (${r.err.code}): ${r.err.msg}`, false);
      return null;
    }
    say(`${name}: done`, true);
    return r;
  } catch (err) {
    say(`${name}: ${err.message}`, false);
    return null;
  }
}

// --- state -------------------------------------------------------------------------------

function renderSummary() {
  const d = device;
  const box = document.getElementById("summary");
  if (!d) { box.replaceChildren(C.el("span", { class: "muted" }, "Unknown device.")); return; }
  box.replaceChildren(
    C.el("div", { class: "row" },
      C.el("span", { class: d.online ? "online" : "offline", id: "online" },
        d.online ? "online" : (d.sleeping ? "asleep" : "offline")),
      d.alarms_active ? C.el("span", { class: "badge alarm" }, "alarm") : null,
      C.el("span", {}, `hardware ${d.hardware_model || "—"}`),
      C.el("span", {}, `firmware ${d.firmware_model || "—"}`),
      C.el("span", { id: "battery" }, `battery ${d.battery ? d.battery.battery + " %" : "—"}`),
      C.el("span", { class: "muted" }, `online since ${d.since ? C.fmtTime(d.since) : "—"}`),
      C.el("span", { class: "muted" }, `last seen ${C.ago(d.last_seen)}`)));
}

function renderChannels() {
  const body = document.querySelector("#channels .body");
  const chans = device ? device.channels : [];
  if (!chans.length) {
    body.replaceChildren(C.el("span", { class: "muted" }, "No channel reported yet (Keepalive)."));
    return;
  }
  body.replaceChildren(...chans.map((c) => {
    const session = c.record_session || recording[c.channel];
    return C.el("div", { class: "channel", "data-channel": c.channel },
      C.el("div", { class: "row" },
        C.el("strong", {}, `Channel ${c.channel}`),
        C.el("span", { class: "badge" + (c.state === 1 ? " ok" : "") }, C.CHANNEL_STATES[c.state] || c.state),
        C.alarmBits(c.alarm).map((t) => C.el("span", { class: "badge alarm" }, C.alarmName(t))),
        session ? C.el("span", { class: "badge rec" }, "recording") : null),
      C.el("div", { class: "row" },
        C.el("button", { class: "snapshot", onclick: () => snapshot(c.channel) }, "Snapshot"),
        session
          ? C.el("button", { class: "stop-record", onclick: () => stopRecord(c.channel, session) }, "Stop recording")
          : C.el("button", { class: "start-record", onclick: () => startRecord(c.channel) }, "Start recording"),
        C.el("a", { href: `/console/live?device=${idq}&channel=${c.channel}` }, "Live view"),
        C.el("a", { href: `/console/recordings?device=${idq}&channel=${c.channel}` }, "Recordings")));
  }));
  const sel = document.getElementById("ptz-channel");
  if (sel.options.length !== chans.length) {
    sel.replaceChildren(...chans.map((c) => C.el("option", { value: c.channel }, c.channel)));
  }
}

async function snapshot(channel) {
  const r = await run("Snapshot", { channel }, `Snapshot of channel ${channel}`);
  if (r && r.picture) {
    document.querySelector("#snapshot-card .body").replaceChildren(
      C.el("img", { class: "snapshot", src: r.picture, alt: `snapshot of channel ${channel}` }),
      C.el("div", { class: "muted" }, `channel ${channel}, ${C.fmtTime(Date.now() / 1000)}`));
  }
}

async function startRecord(channel) {
  const r = await run("StartRecord", { channel }, `Start recording channel ${channel}`);
  if (r) { recording[channel] = r.session_id; renderChannels(); }
}

async function stopRecord(channel, session) {
  const r = await run("StopRecord", { channel, session_id: session }, `Stop recording channel ${channel}`);
  if (r) { delete recording[channel]; renderChannels(); }
}

// --- emulated sensors ----------------------------------------------------------------------

const PULSE_SENSORS = new Set(["bell", "lock"]);
const SENSOR_LABELS = { bell: "Ring the bell", lock: "Tamper with the lock", pir: "PIR", motion: "Motion", external: "External input" };

async function sensor(body, what) {
  try {
    await C.post(`/console/api/devices/${idq}/sensor`, body);
    say(`${what}: done`, true);
  } catch (err) {
    say(`${what}: ${err.message}`, false);
  }
}

function renderSensors() {
  const names = device ? device.sensors : [];
  const card = document.getElementById("sensors");
  card.hidden = !names.length;
  const body = card.querySelector(".body");
  if (body.dataset.names === names.join(",")) return; // keep what is being typed
  body.dataset.names = names.join(",");
  body.replaceChildren(...names.map((name) => {
    if (name === "battery") {
      const input = C.el("input", { type: "number", min: 0, max: 100, value: 10, id: "battery-level", style: "width:4em" });
      return C.el("div", { class: "row", "data-sensor": name }, "Battery",
        input, "%",
        C.el("button", { onclick: () => sensor({ name, percent: Number(input.value) }, `Battery ${input.value} %`) }, "Set"));
    }
    const label = SENSOR_LABELS[name] || name;
    if (PULSE_SENSORS.has(name)) {
      return C.el("div", { class: "row", "data-sensor": name },
        C.el("button", { onclick: () => sensor({ name, action: "press" }, label) }, label));
    }
    return C.el("div", { class: "row", "data-sensor": name }, label,
      C.el("button", { onclick: () => sensor({ name, action: "on" }, `${label} on`) }, "on"),
      C.el("button", { onclick: () => sensor({ name, action: "off" }, `${label} off`) }, "off"));
  }));
}

// --- PTZ ---------------------------------------------------------------------------------

const PAD = [
  ["upleft_step", "↖"], ["up_step", "↑"], ["upright_step", "↗"],
  ["left_step", "←"], ["stop", "■"], ["right_step", "→"],
  ["downleft_step", "↙"], ["down_step", "↓"], ["downright_step", "↘"],
];
const ptzChannel = () => Number(document.getElementById("ptz-channel").value || 0);

function ptz(op, value) {
  const params = { channel: ptzChannel(), op };
  if (value !== undefined) params.value = value;
  return run("CtrlPTZ", params, `PTZ ${op}${value !== undefined ? " " + value : ""}`);
}

function stepPtz(op) {
  return op === "stop" ? ptz(op) : ptz(op, Number(document.getElementById("ptz-step").value));
}

async function loadPresets() {
  const box = document.getElementById("presets");
  try {
    const r = await C.call(id, "GetPTZPresetList", { channel: ptzChannel() });
    if (r.err) { box.replaceChildren(`presets: ${r.err.code} ${r.err.msg}`); return; }
    const list = r.resp.presetList || [];
    box.replaceChildren(...(list.length
      ? list.map((p) => C.el("button", { onclick: () => ptz("goto_preset", p.ptzId) }, `Go to ${p.ptzId}`))
      : [C.el("span", { class: "muted" }, "No preset saved.")]));
  } catch (err) {
    box.replaceChildren(err.message);
  }
}

function setupPtz() {
  document.getElementById("ptz-pad").replaceChildren(...PAD.map(([op, label]) =>
    C.el("button", { "data-op": op, title: op, onclick: () => stepPtz(op) }, label)));
  for (const b of document.querySelectorAll("#ptz-zoom button[data-op]")) {
    b.addEventListener("click", () => stepPtz(b.dataset.op));
  }
  const presetId = () => Number(document.getElementById("preset-id").value);
  document.getElementById("preset-set").onclick = async () => { await ptz("set_preset", presetId()); loadPresets(); };
  document.getElementById("preset-clear").onclick = async () => { await ptz("clear_preset", presetId()); loadPresets(); };
  document.getElementById("ptz-channel").onchange = loadPresets;
}

// --- status, reboot, upgrade -------------------------------------------------------------

function show(obj) {
  const out = document.getElementById("status-out");
  out.hidden = false;
  out.textContent = JSON.stringify(obj, null, 2);
}

async function followUpgrade() {
  const until = Date.now() + 15 * 60 * 1000;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, 2000));
    try {
      const r = await C.call(id, "QueryUpgrade", {});
      if (r.err) { show({ error: r.err }); continue; }
      show(r.resp);
      if (r.resp.upgrade_status === "done" || r.resp.upgrade_status === "error") return;
    } catch (err) {
      show({ waiting: err.message }); // it restarts in the middle: offline for a while
    }
  }
}

function setupMaintenance() {
  document.getElementById("devstatus").onclick = async () => {
    const r = await run("DevStatus", {}, "Status");
    if (r) show(r.resp);
  };
  document.getElementById("query-upgrade").onclick = async () => {
    const r = await run("QueryUpgrade", {}, "Upgrade status");
    if (r) show(r.resp);
  };
  document.getElementById("reboot").onclick = async () => {
    if (confirm(`Reboot ${id}?`)) await run("RebootDevice", {}, "Reboot");
  };
  document.getElementById("upgrade-start").onclick = async () => {
    const bundle = document.getElementById("bundle").value.trim();
    const url = document.getElementById("bundle-url").value.trim();
    const model = document.getElementById("bundle-model").value.trim();
    const params = bundle ? { bundle } : { url, firmware_model: model };
    if (!confirm(`Upgrade ${id} with ${bundle || url}?`)) return;
    if (await run("UpgradeFirmware", params, "Upgrade")) followUpgrade();
  };
}

// --- the configuration document ----------------------------------------------------------

let configDoc = null;
const READ_ONLY = new Set(["fps", "bitrate", "width", "height", "gop"]); // reported, never set

function field(key, value, path) {
  const name = path.join(".");
  let input;
  if (typeof value === "boolean") input = C.el("input", { type: "checkbox", checked: value });
  else if (typeof value === "number") input = C.el("input", { type: "number", step: "any", value });
  else if (typeof value === "string") input = C.el("input", { type: "text", value, size: 30 });
  else input = C.el("input", { type: "text", value: JSON.stringify(value), size: 40, "data-json": "1" });
  input.id = "cfg-" + name;
  input.dataset.path = JSON.stringify(path);
  if (READ_ONLY.has(key) && path.includes("video_encoding")) {
    input.disabled = true;
    input.title = "reported by the device, not set";
  }
  return C.el("div", { class: "field" }, C.el("label", { for: input.id }, key), input);
}

function buildForm(obj, path, container) {
  for (const [key, value] of Object.entries(obj)) {
    const p = path.concat(key);
    if (value && typeof value === "object" && !Array.isArray(value) && key !== "extension") {
      const fs = C.el("fieldset", {}, C.el("legend", {}, p.join(".")));
      buildForm(value, p, fs);
      container.append(fs);
    } else {
      container.append(field(key, value, p));
    }
  }
}

function renderConfig(doc) {
  configDoc = doc;
  const form = document.getElementById("config-form");
  form.replaceChildren();
  buildForm(doc, [], form);
  document.getElementById("config-save").disabled = false;
}

const getPath = (obj, path) => path.reduce((o, k) => (o === undefined ? o : o[k]), obj);

// What the form changed, as a SetConfig patch (only the changed leaves).
function configPatch() {
  const patch = {};
  for (const input of document.querySelectorAll("#config-form input[data-path]")) {
    if (input.disabled) continue;
    const path = JSON.parse(input.dataset.path);
    const old = getPath(configDoc, path);
    let value;
    if (input.type === "checkbox") value = input.checked;
    else if (input.type === "number") value = input.value === "" ? old : Number(input.value);
    else if (input.dataset.json) {
      try { value = JSON.parse(input.value); } catch (e) { throw new Error(`${path.join(".")}: not JSON: ${e.message}`); }
    } else value = input.value;
    if (JSON.stringify(value) === JSON.stringify(old)) continue;
    let node = patch;
    for (const k of path.slice(0, -1)) node = node[k] = node[k] || {};
    node[path[path.length - 1]] = value;
  }
  return patch;
}

function setupConfig() {
  const box = document.getElementById("config-result");
  document.getElementById("config-load").onclick = async () => {
    try {
      const r = await C.call(id, "GetConfig", {});
      if (r.err) { C.message(box, `GetConfig refused (${r.err.code}): ${r.err.msg}`, false); return; }
      box.replaceChildren();
      renderConfig(r.resp);
    } catch (err) { C.message(box, err.message, false); }
  };
  document.getElementById("config-save").onclick = async () => {
    let patch;
    try { patch = configPatch(); } catch (err) { C.message(box, err.message, false); return; }
    if (!Object.keys(patch).length) { C.message(box, "Nothing changed.", true); return; }
    try {
      const r = await C.call(id, "SetConfig", patch);
      if (r.err) {
        C.message(box, `The device refused (${r.err.code}): ${r.err.msg}`, false);
        return;
      }
      C.message(box, `Saved: ${JSON.stringify(patch)}`, true);
      renderConfig(r.resp);
    } catch (err) { C.message(box, err.message, false); }
  };
}

// --- start -------------------------------------------------------------------------------

function render() {
  renderSummary();
  renderChannels();
  renderSensors();
}

async function loadCaps() {
  if (caps || !device || !device.online) return;
  try {
    const r = await C.call(id, "GetCap", {});
    if (r.err) return;
    caps = r.resp;
    document.getElementById("ptz").hidden = !caps.ptz;
    document.getElementById("upgrade").hidden = !caps.firmware_download_https;
    if (caps.ptz) loadPresets();
  } catch (err) { /* offline: asked again when it comes back */ }
}

async function load() {
  try {
    const data = await C.api("/console/api/devices");
    device = data.devices.find((d) => d.id === id) || null;
  } catch (err) {
    say(err.message, false);
  }
  render();
  loadCaps();
}

setupPtz();
setupMaintenance();
setupConfig();
load();
C.events({
  device: (d) => {
    if (d.id !== id) return;
    device = d;
    render();
    loadCaps();
  },
  state: C.setLiveState,
});
