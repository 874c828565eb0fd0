// fusionstream live viewer: one card per stream, fed by Server-Sent Events from /events.
// The server sends each stream's latest state at most `fps` times a second; frames are
// fetched from /frame only when a newer one exists and the previous one has been drawn,
// so a slow tab skips frames instead of falling behind.
"use strict";

const TIMELINE_MAX = 120;
const STALE_AFTER_S = 3;
const cards = new Map();
const grid = document.getElementById("streams");
const empty = document.getElementById("empty");
const connection = document.getElementById("connection");
const template = document.getElementById("stream-card");

function setConnection(state, text) {
  connection.dataset.state = state;
  connection.textContent = text;
}

function hue(label) {
  // Digits (the shipped model's classes) get evenly spread hues; other labels a hash.
  if (/^\d+$/.test(label)) return (Number(label) * 36) % 360;
  let h = 0;
  for (const ch of label) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function scoreLevel(score) {
  return score >= 0.7 ? "good" : score >= 0.4 ? "fair" : "poor";
}

function clock(ns) {
  const d = new Date(Number(BigInt(ns) / 1000000n));
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function card(streamId) {
  let c = cards.get(streamId);
  if (c) return c;
  const el = template.content.firstElementChild.cloneNode(true);
  el.dataset.stream = streamId;
  el.querySelector(".name").textContent = streamId;
  c = {
    id: streamId, el, data: null, image: null, frameSeq: 0, loading: false, timeline: new Map(),
    received: performance.now(), canvas: el.querySelector("canvas.frame"),
  };
  cards.set(streamId, c);
  // Keep cards sorted by stream id, so the layout does not jump as streams appear.
  const after = [...grid.children].find((other) => other.dataset.stream > streamId);
  grid.insertBefore(el, after || null);
  empty.hidden = true;
  return c;
}

function remove(streamId) {
  const c = cards.get(streamId);
  if (!c) return;
  c.el.remove();
  cards.delete(streamId);
  empty.hidden = cards.size > 0;
}

function update(s) {
  const c = card(s.stream);
  c.data = s;
  // The server's idle time, not this page's: a page loaded (or reconnected) after a stream fell silent
  // showed "no input for 3 s" for a stream silent for minutes.
  c.received = performance.now() - 1000 * (s.idle_s || 0);
  const el = c.el;
  const p = s.prediction;
  if (p) {
    el.dataset.windowId = p.window_id;
    el.dataset.label = p.label;
    const label = el.querySelector(".prediction .label");
    label.textContent = p.label;
    label.style.color = `hsl(${hue(p.label)} 80% 70%)`;
    const score = el.querySelector(".prediction .score");
    // An embedding model publishes a vector, not a class: there is no score to show.
    score.textContent = p.score == null ? "" : p.score.toFixed(2);
    score.dataset.level = p.score == null ? "" : scoreLevel(p.score);
    el.querySelector(".prediction .top").textContent =
      p.top.map(([l, v]) => `${l} ${v.toFixed(2)}`).join(" · ");
    for (const m of el.querySelectorAll(".modality")) {
      const name = m.dataset.modality;
      m.dataset.present = String(Boolean(p.modalities[name]));
      const cov = p.coverage[name];
      m.querySelector("small").textContent = cov === undefined ? "" : `${Math.round(cov * 100)}%`;
    }
    const latency = p.capture_to_publish_ms == null ? "" : ` · ${Math.round(p.capture_to_publish_ms)} ms`;
    // A provisional prediction (revisions on) is replaced by its window's final when that comes.
    const revision = p.final === false ? " · provisional" : "";
    const windowText = el.querySelector(".mask .window");
    windowText.textContent = `${clock(p.t_start_ns)}${latency}${revision}`;
    windowText.title = `window start; closed by ${p.closed_by}; capture → publish latency; model ${p.model_version}`;
  }
  if (s.audio) {
    const db = s.audio.level_db;
    el.querySelector(".meter .bar").style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
    el.querySelector(".audio .db").textContent = `${db.toFixed(1)} dBFS`;
  }
  if (s.transcript) {
    const t = el.querySelector(".transcript");
    t.textContent = s.transcript.text || "…";
    t.dataset.final = String(s.transcript.is_final);
  }
  if (s.timeline.length) addTimeline(c, s.timeline);
  if (s.frame && s.frame.seq !== c.frameSeq) loadFrame(c);
  else draw(c);
}

function addTimeline(c, entries) {
  for (const e of entries) c.timeline.set(e.window_id, e);
  const sorted = [...c.timeline.values()].sort((a, b) => (BigInt(a.t_start_ns) < BigInt(b.t_start_ns) ? -1 : 1));
  const kept = sorted.slice(-TIMELINE_MAX);
  c.timeline = new Map(kept.map((e) => [e.window_id, e]));
  const list = c.el.querySelector(".timeline");
  const stick = list.scrollLeft + list.clientWidth >= list.scrollWidth - 4; // follow the newest unless scrolled back
  list.replaceChildren(...kept.map((e) => {
    const li = document.createElement("li");
    li.dataset.windowId = e.window_id;
    li.dataset.label = e.label;
    li.textContent = e.label;
    li.style.background = `hsl(${hue(e.label)} 65% ${18 + 32 * e.score}%)`;
    const present = ["V", "A", "T"].filter((_, i) => e.mask[i]).join(" ") || "none";
    li.title = `${clock(e.t_start_ns)}  ${e.label} (${e.score.toFixed(2)})  ${present}`;
    return li;
  }));
  if (stick) list.scrollLeft = list.scrollWidth;
}

function loadFrame(c) {
  if (c.loading) return; // the update after this load finishes asks again for the newest
  c.loading = true;
  const want = c.data.frame.seq;
  const img = new Image();
  img.onload = () => {
    c.loading = false;
    c.image = img;
    c.frameSeq = want;
    c.canvas.dataset.frameSeq = String(want);
    draw(c);
    if (c.data.frame && c.data.frame.seq !== want) loadFrame(c);
  };
  img.onerror = () => { c.loading = false; };
  img.src = `frame?stream=${encodeURIComponent(c.id)}&seq=${want}`;
}

function draw(c) {
  const canvas = c.canvas;
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, W, H);
  // The overlays sit on the picture itself, wherever letterboxing puts it.
  let x0 = 0, y0 = 0, w = W, h = H;
  if (c.image) {
    const scale = Math.min(W / c.image.naturalWidth, H / c.image.naturalHeight);
    w = c.image.naturalWidth * scale;
    h = c.image.naturalHeight * scale;
    x0 = (W - w) / 2;
    y0 = (H - h) / 2;
    ctx.imageSmoothingEnabled = scale < 2; // small synthetic frames stay crisp
    ctx.drawImage(c.image, x0, y0, w, h);
  } else {
    ctx.fillStyle = "#8a94a3";
    ctx.font = "16px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText("no video yet", W / 2, H / 2);
    ctx.textAlign = "start";
  }
  const p = c.data && c.data.prediction;
  if (p) {
    // The label badge: class and score, coloured by class, with a bar as long as the score.
    ctx.font = "bold 44px ui-monospace, monospace";
    const bw = Math.max(ctx.measureText(p.label).width, ctx.measureText("0.00").width * 0.45) + 28;
    const bx = x0 + 8, by = y0 + 8;
    ctx.fillStyle = "rgba(0, 0, 0, 0.62)";
    ctx.fillRect(bx, by, bw, 84);
    // Faded: with --sync, a prediction of another window than the frame's (none for it yet); without,
    // one further behind the newest frame than predictions recently were (the service stopped or is behind).
    ctx.globalAlpha = p.current ? 1 : 0.45;
    ctx.fillStyle = `hsl(${hue(p.label)} 85% 70%)`;
    ctx.fillText(p.label, bx + 14, by + 46);
    if (p.score != null) {
      ctx.font = "bold 18px ui-monospace, monospace";
      const level = scoreLevel(p.score);
      ctx.fillStyle = level === "good" ? "#3ccf7a" : level === "fair" ? "#e8b93c" : "#e5534b";
      ctx.fillText(p.score.toFixed(2), bx + 14, by + 70);
      ctx.fillRect(bx, by + 80, bw * p.score, 4);
    }
    ctx.globalAlpha = 1;
    // The presence mask, bottom left: what the fusion head saw for this window.
    ctx.font = "bold 14px ui-monospace, monospace";
    const colours = { video: "#d98cff", audio: "#ffd24d", text: "#7fb6ff" };
    let x = x0 + 8;
    for (const [name, letter] of [["video", "V"], ["audio", "A"], ["text", "T"]]) {
      const on = Boolean(p.modalities[name]);
      ctx.fillStyle = on ? "rgba(0, 0, 0, 0.7)" : "rgba(0, 0, 0, 0.4)";
      ctx.fillRect(x, y0 + h - 30, 24, 22);
      ctx.fillStyle = on ? colours[name] : "#666";
      ctx.fillText(letter, x + 7, y0 + h - 14);
      x += 28;
    }
  }
  if (c.data && c.data.frame) {
    // The frame's capture time, and how far it is behind the newest frame (the --sync delay).
    const f = c.data.frame;
    const text = clock(f.t_ns) + (f.behind_ms >= 50 ? ` −${(f.behind_ms / 1000).toFixed(1)} s` : "");
    ctx.font = "12px ui-monospace, monospace";
    const tw = ctx.measureText(text).width + 8;
    ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
    ctx.fillRect(x0 + w - tw - 6, y0 + h - 26, tw, 18);
    ctx.fillStyle = "#ddd";
    ctx.fillText(text, x0 + w - tw - 2, y0 + h - 13);
  }
}

function markStale() {
  const now = performance.now();
  for (const c of cards.values()) {
    const idle = (now - c.received) / 1000;
    const state = c.el.querySelector(".state");
    const stale = idle > STALE_AFTER_S;
    state.dataset.state = stale ? "stale" : "live";
    state.textContent = stale ? `no input for ${Math.round(idle)} s` : "live";
  }
}

function connect() {
  const events = new EventSource("events");
  events.addEventListener("hello", (e) => {
    // (Re)connected: the server sends every stream again from scratch.
    const config = JSON.parse(e.data);
    for (const id of [...cards.keys()]) remove(id);
    const t = config.topics;
    document.getElementById("source").textContent =
      `${config.bootstrap} · ${t.video} ${t.audio} ${t.text} → ${t.predictions} · ≤ ${config.fps} updates/s`;
    setConnection("live", "live");
  });
  events.addEventListener("stream", (e) => update(JSON.parse(e.data)));
  events.addEventListener("gone", (e) => remove(JSON.parse(e.data).stream));
  events.onerror = () => setConnection("reconnecting", "reconnecting…"); // EventSource retries by itself
}

setInterval(markStale, 1000);
connect();
