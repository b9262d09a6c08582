// The LANrage web UI: the local API (same origin) drawn every second. No framework and no
// build step; served from the binary.
"use strict";

const COLOURS = ["#ff4d3d", "#4da3ff", "#6bd968", "#ffb454", "#c77dff", "#2ed1c4"];
const $ = (selector) => document.querySelector(selector);

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.appendChild(cell instanceof Node ? cell : text("td", cell));
  return tr;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function bits(n) {
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

async function dashboard() {
  const status = await api("/status");
  const party = status.party;
  $("#party").textContent = party
    ? `${party.name} · ${party.members} member${party.members === 1 ? "" : "s"} · code ${party.code}`
    : "not in a party";
  $("#me").textContent = `${party && party.virtual_ip ? party.virtual_ip : "no virtual IP"} on ${status.interface}` +
    (status.nat ? ` · NAT ${status.nat.nat_type}` : "");
  $("#games").textContent = status.games.length
    ? status.games.map((g) => g.name).join(", ")
    : "none running";
  const body = $("#peers tbody");
  body.replaceChildren(...status.peers.map((p) => row([
    p.name,
    p.virtual_ip,
    text("td", p.path, p.path),
    p.endpoint || "–",
    p.rtt_ms == null ? "–" : `${p.rtt_ms.toFixed(1)} ms`,
    bytes(p.rx_bytes),
    bytes(p.tx_bytes),
  ])));
  if (!status.peers.length) body.appendChild(row(["no peers yet", "", "", "", "", "", ""]));
  drawHistory(await api("/api/history"));
}

function drawHistory(history) {
  const svg = $("#throughput");
  const lines = history.peers.map((p) => p.rx_bps.map((rx, i) => rx + p.tx_bps[i]));
  const top = Math.max(1, ...lines.flat());
  const ns = "http://www.w3.org/2000/svg";
  const shapes = lines.map((line, k) => {
    const path = document.createElementNS(ns, "polyline");
    const step = 600 / Math.max(1, 299);
    const offset = 600 - step * (line.length - 1);
    path.setAttribute("points", line.map((v, i) => `${(offset + i * step).toFixed(1)},${(158 - (v / top) * 150).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", COLOURS[k % COLOURS.length]);
    path.setAttribute("stroke-width", "2");
    path.setAttribute("vector-effect", "non-scaling-stroke");
    return path;
  });
  svg.replaceChildren(...shapes);
  $("#legend").replaceChildren(...history.peers.map((p, k) => {
    const last = lines[k].length ? lines[k][lines[k].length - 1] : 0;
    const span = text("span", `● ${p.name} ${bits(last)}`);
    span.style.color = COLOURS[k % COLOURS.length];
    return span;
  }), text("span", `peak ${bits(top)}`, "muted"));
}

async function servers() {
  const list = await api("/api/servers");
  const body = $("#servers tbody");
  body.replaceChildren(...list.map((s) => row([
    s.name,
    s.game,
    `${s.address}:${s.port}`,
    s.players == null ? "–" : (s.max_players == null ? `${s.players}` : `${s.players}/${s.max_players}`),
    s.host,
    s.own ? "this machine" : (s.latency_ms == null ? "–" : `${s.latency_ms.toFixed(1)} ms`),
  ])));
  if (!list.length) body.appendChild(row(["no servers announced", "", "", "", "", ""]));
}

function show(value) {
  return Array.isArray(value) ? value.join(",") : String(value);
}

// The value typed, as the setting's JSON type (taken from its default).
function parse(input, example) {
  const raw = input.value.trim();
  if (typeof example === "boolean") return raw === "true";
  if (typeof example === "number") return Number(raw);
  if (Array.isArray(example)) return raw === "" ? [] : raw.split(",").map((s) => s.trim());
  return raw;
}

async function settings() {
  const report = await api("/api/settings");
  $("#configuration").textContent = report.configuration ? `(configuration ${report.configuration})` : "";
  const problems = $("#settings-problems");
  problems.hidden = !report.problems.length;
  problems.textContent = report.problems.join(" · ");
  const body = $("#settings tbody");
  body.replaceChildren(...report.settings.map((s) => {
    let input;
    if (typeof s.default === "boolean") {
      input = document.createElement("select");
      for (const v of ["true", "false"]) input.appendChild(text("option", v));
      input.value = String(s.value);
    } else if (s.secret) {
      // Never shown: typed anew to replace it.
      input = document.createElement("input");
      input.type = "password";
      input.placeholder = s.value ? "set (type to replace)" : "";
      input.size = 34;
    } else {
      input = document.createElement("input");
      input.value = show(s.value);
      input.size = 34;
    }
    input.id = `setting-${s.key}`;
    const save = text("button", "Save");
    save.id = `save-${s.key}`;
    save.addEventListener("click", async () => {
      const message = $("#settings-message");
      if (s.secret && input.value === "") {
        message.textContent = `${s.key} unchanged (type a new value; \`lanrage config reset ${s.key}\` clears it)`;
        return;
      }
      try {
        const info = await api(`/api/settings/${s.key}`, {
          method: "PUT",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ value: parse(input, s.default) }),
        });
        message.textContent = `${info.key} = ${show(info.value)} (${info.applies === "now" ? "applied now" : "takes effect when the daemon restarts"})`;
        message.className = "";
      } catch (e) {
        message.textContent = e.message;
        message.className = "warning";
      }
    });
    const name = text("td", s.key);
    name.title = s.help;
    const value = document.createElement("td");
    value.appendChild(input);
    const button = document.createElement("td");
    button.appendChild(save);
    const applies = s.restart_pending ? "restart to apply"
      : s.from_flag ? "set by a flag for this run"
      : (s.applies === "now" ? "live" : "at restart");
    return row([name, value, button, text("td", applies, "muted")]);
  }));
}

async function discord() {
  const d = await api("/api/discord");
  $("#discord").textContent = `webhook ${d.webhook ? "set" : "off"} · bot ${d.bot ? "set" : "off"} · Rich Presence ${d.presence} · ${d.sent} sent, ${d.dropped} dropped`;
}

const PAGES = { dashboard, servers, settings, discord };
let timer = null;

async function refresh(page) {
  try {
    await PAGES[page]();
    $("#connection").textContent = "connected";
  } catch (e) {
    $("#connection").textContent = `daemon unreachable: ${e.message}`;
  }
}

function route() {
  const page = PAGES[location.hash.slice(1)] ? location.hash.slice(1) : "dashboard";
  for (const name of Object.keys(PAGES)) {
    $(`#page-${name}`).hidden = name !== page;
    $(`#nav-${name}`).classList.toggle("active", name === page);
  }
  clearInterval(timer);
  refresh(page);
  // Settings are not redrawn under the user's typing.
  if (page !== "settings") timer = setInterval(() => refresh(page), 1000);
}

window.addEventListener("hashchange", route);
route();
