// The alarms, newest first: the list once, then each new alarm (and its picture, when
// it arrives) as it happens. A recorded alarm links to its moment in the recordings.
"use strict";

C.header("alarms");
const only = C.param("device");
const alarms = new Map(); // id -> Alarm
const tbody = document.querySelector("#alarms tbody");
const MAX_SHOWN = 500;

if (only) document.getElementById("title").textContent = `Alarms of ${only}`;

function row(a) {
  const rec = a.recording;
  const recLink = rec
    ? C.el("a", { class: "play", href: `/console/recordings?device=${encodeURIComponent(rec.device)}` +
        `&channel=${rec.channel}&at=${rec.at}` }, "play the recording")
    : C.el("span", { class: "muted" }, "not recorded");
  const picture = a.picture
    ? C.el("a", { href: a.picture, target: "_blank" },
        C.el("img", { class: "thumb", src: a.picture, alt: `picture of alarm ${a.id}` }))
    : C.el("span", { class: "muted" }, a.state === "end" ? "" : "no picture (yet)");
  return C.el("tr", { "data-alarm": a.id, "data-type": a.type },
    C.el("td", {}, C.fmtTime(a.time)),
    C.el("td", {}, C.el("a", { href: `/console/device?id=${encodeURIComponent(a.device)}` }, a.device)),
    C.el("td", { class: "kind" }, C.alarmName(a.type), " ",
      C.el("span", { class: "badge" }, a.state),
      a.desc ? C.el("div", { class: "muted" }, a.desc) : null),
    C.el("td", {}, a.channel),
    C.el("td", { class: "picture" }, picture),
    C.el("td", {}, recLink));
}

function render() {
  const list = [...alarms.values()].sort((x, y) => y.id - x.id).slice(0, MAX_SHOWN);
  tbody.replaceChildren(...list.map(row));
  document.getElementById("empty").hidden = alarms.size > 0;
}

async function load() {
  const q = new URLSearchParams({ last: "200" });
  if (only) q.set("device", only);
  try {
    const data = await C.api(`/console/api/alarms?${q}`);
    for (const a of data.alarms) alarms.set(a.id, a);
  } catch (err) {
    C.message(document.getElementById("result"), `The alarm list: ${err.message} (new alarms still show)`, false);
  }
  render();
}

load();
C.events({
  alarm: (a) => {
    if (only && a.device !== only) return;
    alarms.set(a.id, a);
    render();
  },
  state: C.setLiveState,
});
