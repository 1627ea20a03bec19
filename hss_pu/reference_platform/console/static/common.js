// What every page of the console shares: calls to the API, the live events, the header,
// small DOM and time helpers. Plain script (no modules, no build): it defines `C`.
"use strict";

const C = (() => {
  // Table I.2-16 of H.627.2: alarm type -> name (the device's own desc is shown too).
  const ALARM_TYPES = {
    2: "external alarm", 3: "motion", 4: "mixed net", 5: "cry", 6: "face",
    7: "sound", 8: "low battery", 9: "lock picking", 10: "bell ring",
    11: "person", 12: "PIR motion",
  };
  const CHANNEL_STATES = { 0: "offline", 1: "online", 3: "error", 4: "disabled" };

  class ApiError extends Error {
    constructor(status, info) { super(info); this.status = status; }
  }

  function toLogin() {
    const next = location.pathname + location.search;
    location.href = "/console/login?next=" + encodeURIComponent(next);
  }

  // fetch + JSON; a non-2xx answer throws ApiError with the server's {"info"}; no session
  // (401) goes to the login page.
  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options };
    if (options.body !== undefined && typeof options.body !== "string") {
      init.body = JSON.stringify(options.body);
      init.headers = { "Content-Type": "application/json", ...(options.headers || {}) };
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401 && !options.noRedirect) toLogin();
    if (!resp.ok) {
      throw new ApiError(resp.status, (data && data.info) || `${resp.status} ${resp.statusText}`);
    }
    return data;
  }
  const post = (path, body) => api(path, { method: "POST", body: body || {} });

  // A Vd request through the console: {"resp"} or {"err": {code, msg}} (the device's).
  const call = (device, method, params) =>
    post(`/console/api/devices/${encodeURIComponent(device)}/call`, { method, params: params || {} });

  // The live events: handlers.device(Device), handlers.alarm(Alarm), handlers.state(text).
  // EventSource reconnects by itself; a reconnect starts with every device again.
  function events(handlers) {
    const es = new EventSource("/console/api/events");
    es.addEventListener("device", (e) => handlers.device && handlers.device(JSON.parse(e.data)));
    es.addEventListener("alarm", (e) => handlers.alarm && handlers.alarm(JSON.parse(e.data)));
    es.onopen = () => handlers.state && handlers.state("live");
    es.onerror = async () => {
      if (handlers.state) handlers.state("reconnecting");
      // An EventSource cannot see a 401: ask the API whether the session is gone.
      try { await api("/console/api/devices", { noRedirect: true }); }
      catch (e) { if (e.status === 401) { es.close(); toLogin(); } }
    };
    return es;
  }

  // el("a", {href: "/x", class: "y"}, "text", child...): a DOM element.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  const param = (name) => new URLSearchParams(location.search).get(name);
  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(epoch) {
    if (epoch === null || epoch === undefined) return "never";
    const d = new Date(epoch * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function ago(epoch) {
    if (epoch === null || epoch === undefined) return "never";
    const s = Math.max(0, Date.now() / 1000 - epoch);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return fmtTime(epoch);
  }
  const alarmName = (type) => ALARM_TYPES[type] || `type ${type}`;
  // The alarm types set in a Keepalive channel's "alarm" bit field (bit n = type n).
  const alarmBits = (bits) => Object.keys(ALARM_TYPES).map(Number).filter((t) => bits & (1 << t));

  function message(box, text, ok) {
    box.replaceChildren(el("div", { class: "message " + (ok ? "ok" : "error") }, text));
  }

  // The header: the console's pages and a way out.
  function header(active) {
    const link = (href, name, key) =>
      el("a", { href, class: key === active ? "active" : null }, name);
    const logout = el("a", { href: "#", onclick: async (e) => {
      e.preventDefault();
      try { await post("/console/api/logout"); } catch (err) { /* gone already */ }
      location.href = "/console/login";
    } }, "Log out");
    document.body.prepend(el("header", {},
      el("span", { class: "brand" }, "hss-pu console"),
      link("/console/", "Devices", "devices"),
      link("/console/alarms", "Alarms", "alarms"),
      el("span", { class: "spacer" }),
      el("span", { id: "live-state", class: "muted" }),
      logout));
  }
  const setLiveState = (text) => {
    const n = document.getElementById("live-state");
    if (n) n.textContent = text;
  };

  return {
    ALARM_TYPES, CHANNEL_STATES, ApiError, api, post, call, events, el, param, fmtTime, ago,
    alarmName, alarmBits, message, header, setLiveState,
  };
})();
