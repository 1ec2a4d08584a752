// nst-jax studio page: picks images and knobs, posts a job, and draws what the server pushes
// over the WebSocket (one "progress" event per compiled chunk). No polling.
"use strict";

const $ = (id) => document.getElementById(id);
const KNOBS = ["size", "steps", "content_weight", "style_weight", "tv_weight", "learning_rate",
               "optimizer", "scales", "preserve_colors", "preview_every"];

const state = {
  session: null,
  info: null,
  content: null,        // {file} or {sample}
  styles: [],           // [{file} | {sample}]
  jobs: new Map(),      // id -> {n, status, position}
  current: null,        // id of the job shown in the preview
  losses: [],
  count: 0,
};

function say(text) { $("message").textContent = text || ""; }

function fmtNumber(x) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  const a = Math.abs(x);
  return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? x.toExponential(3) : x.toPrecision(4);
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(0)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ------------------------------------------------------------------ connection

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/ws`);
  ws.onmessage = (msg) => handle(JSON.parse(msg.data));
  ws.onclose = () => {
    state.session = null;
    $("start").disabled = true;
    $("stop").disabled = true;
    $("connection").textContent = "disconnected: reload the page";
    $("connection").classList.add("lost");
  };
}

function handle(ev) {
  switch (ev.type) {
    case "hello": return hello(ev);
    case "queued": return queued(ev);
    case "started": return started(ev);
    case "progress": return progress(ev);
    case "done": return done(ev);
    case "cancelled": return finished(ev.job, "cancelled");
    case "failed": say(ev.error); return finished(ev.job, "failed");
  }
}

function hello(ev) {
  state.session = ev.session;
  state.info = ev;
  $("connection").textContent = "connected";
  const w = $("weights");
  w.textContent = `weights: ${ev.weights.label}`;
  w.classList.toggle("random", !ev.weights.pretrained);
  w.title = ev.weights.pretrained ? "" : "RANDOM weights match colours and fine texture only; get real ones with: nst-jax weights download";
  fillSelect($("preset"), Object.keys(ev.presets), ev.default_preset);
  fillSelect($("optimizer"), ev.choices.optimizer);
  fillSelect($("preserve_colors"), ev.choices.preserve_colors);
  applyPreset();
  for (const name of ev.samples.all) {
    addSampleButton("content-samples", name, () => setContent({sample: name}));
    addSampleButton("style-samples", name, () => addStyles([{sample: name}]));
  }
  $("start").disabled = false;
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => new Option(v, v, false, v === chosen)));
}

function applyPreset() {
  const knobs = state.info.presets[$("preset").value];
  for (const k of KNOBS) $(k).value = knobs[k] === null ? "" : String(knobs[k]);
}

function addSampleButton(where, name, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = name;
  b.className = "sample";
  b.dataset.name = name;
  b.onclick = onclick;
  $(where).append(b);
}

// ------------------------------------------------------------------ picking images

function sourceUrl(src) {
  return src.file ? URL.createObjectURL(src.file) : `/samples/${encodeURIComponent(src.sample)}`;
}

function checkFile(file) {
  const limit = state.info ? state.info.limits.max_upload_bytes : Infinity;
  if (file.size > limit) {
    say(`${file.name} is ${(file.size / 2 ** 20).toFixed(0)} MB; the limit is ` +
        `${(limit / 2 ** 20).toFixed(0)} MB per image`);
    return false;
  }
  return true;
}

function setContent(src) {
  if (src.file && !checkFile(src.file)) return;
  say("");
  state.content = src;
  const img = $("content-thumb");
  img.src = sourceUrl(src);
  img.hidden = false;
  $("content-drop").querySelector(".hint").hidden = true;
}

function addStyles(sources) {
  const max = state.info ? state.info.limits.max_styles : 4;
  for (const src of sources) {
    if (src.file && !checkFile(src.file)) continue;
    if (state.styles.length >= max) { say(`at most ${max} style images`); break; }
    state.styles.push(src);
  }
  renderStyles();
}

function renderStyles() {
  const list = $("style-list");
  list.replaceChildren();
  state.styles.forEach((src, i) => {
    const li = document.createElement("li");
    const img = document.createElement("img");
    img.src = sourceUrl(src);
    img.alt = src.file ? src.file.name : src.sample;
    const rm = document.createElement("button");
    rm.type = "button";
    rm.textContent = "×";
    rm.title = "remove";
    rm.onclick = () => { state.styles.splice(i, 1); renderStyles(); };
    li.append(img, rm);
    list.append(li);
  });
}

function wireDrop(zone, onFiles) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

// ------------------------------------------------------------------ jobs

async function start() {
  say("");
  if (!state.content) return say("choose a content image");
  if (!state.styles.length) return say("choose at least one style image");
  const form = new FormData();
  form.append("session", state.session);
  form.append("preset", $("preset").value);
  for (const k of KNOBS) form.append(k, $(k).value);
  if (state.content.file) form.append("content", state.content.file);
  else form.append("content_sample", state.content.sample);
  for (const s of state.styles) {
    if (s.file) form.append("style", s.file);
    else form.append("style_sample", s.sample);
  }
  let reply;
  try {
    const resp = await fetch("/api/jobs", {method: "POST", body: form});
    reply = await resp.json().catch(() => ({error: `the server answered ${resp.status}`}));
    if (!resp.ok) return say(reply.error || `the server answered ${resp.status}`);
  } catch (err) {
    return say(`the upload failed: ${err.message}`);
  }
  const job = jobOf(reply.job);  // the "queued" event may have come first
  if (!job.status) { job.status = "queued"; job.position = reply.position; }
  renderQueue();
}

async function stop() {
  let target = state.current && state.jobs.get(state.current)?.status === "running" ? state.current : null;
  if (!target) {
    const waiting = [...state.jobs].filter(([, j]) => j.status === "queued");
    if (waiting.length) target = waiting[waiting.length - 1][0];
  }
  if (!target) return;
  $("stop").disabled = true;
  if (target === state.current) $("status").textContent = "stopping…";
  const resp = await fetch(`/api/jobs/${target}/stop`, {method: "POST"});
  if (!resp.ok) say((await resp.json().catch(() => ({}))).error || "could not stop the job");
}

function jobOf(id) {
  if (!state.jobs.has(id)) state.jobs.set(id, {n: ++state.count});
  return state.jobs.get(id);
}

function queued(ev) {
  const job = jobOf(ev.job);
  job.status = "queued";
  job.position = ev.position;
  renderQueue();
}

function started(ev) {
  const job = jobOf(ev.job);
  job.status = "running";
  state.current = ev.job;
  state.losses = [];
  $("status").textContent = `running job ${job.n}`;
  $("step").textContent = `0 / ${ev.total}`;
  $("rate").textContent = "compiling…";
  $("image-size").textContent = "–";
  $("eta").textContent = "–";
  $("loss").textContent = "–";
  $("download").hidden = true;
  $("stop").disabled = false;
  drawLoss();
  renderQueue();
}

function progress(ev) {
  if (ev.job !== state.current) return;
  const img = $("preview");
  if (ev.image) {  // left out when this page falls behind
    img.src = ev.image;
    img.hidden = false;
    img.dataset.step = ev.step;
  }
  state.losses.push(...ev.losses);
  $("step").textContent = `${ev.step} / ${ev.total}`;
  $("image-size").textContent = `${ev.width}×${ev.height}` +
    (ev.n_scales > 1 ? ` (scale ${ev.scale + 1} of ${ev.n_scales})` : "");
  $("rate").textContent = ev.rate ? `${ev.rate.toFixed(1)} steps/s` : "compiling…";
  $("eta").textContent = fmtSeconds(ev.eta);
  $("loss").textContent = fmtNumber(ev.losses[ev.losses.length - 1]);
  drawLoss();
}

function done(ev) {
  const job = jobOf(ev.job);
  const stopped = ev.status === "stopped";
  $("status").textContent = stopped ? `job ${job.n} stopped: best image kept` : `job ${job.n} finished`;
  $("step").textContent = `${ev.steps}`;
  $("eta").textContent = "–";
  $("loss").textContent = fmtNumber(ev.loss);
  if (ev.diverged) say(ev.diverged);
  const a = $("download");
  a.href = ev.url;
  a.download = `nst-jax-${job.n}.png`;
  a.textContent = `Download PNG (${ev.width}×${ev.height})`;
  a.hidden = false;
  const fig = document.createElement("figure");
  const link = document.createElement("a");
  link.href = ev.url;
  link.download = `nst-jax-${job.n}.png`;
  const img = document.createElement("img");
  img.src = ev.url;
  img.alt = `result ${job.n}`;
  link.append(img);
  const cap = document.createElement("figcaption");
  cap.textContent = `#${job.n} · ${ev.width}×${ev.height} · ${ev.steps} steps${stopped ? " (stopped)" : ""}`;
  cap.title = `loss ${fmtNumber(ev.loss)}, ${fmtSeconds(ev.seconds)}`;
  fig.append(link, cap);
  $("strip").prepend(fig);
  finished(ev.job, ev.status);
}

function finished(id, status) {
  const job = jobOf(id);
  job.status = status;
  if (id === state.current) {
    $("stop").disabled = true;
    if (status === "failed" || status === "cancelled") $("status").textContent = `job ${job.n} ${status}`;
  }
  if (status !== "running" && status !== "queued") state.jobs.delete(id);
  renderQueue();
}

function renderQueue() {
  const items = [...state.jobs.values()].filter((j) => j.status === "queued");
  $("queue").replaceChildren(...items.map((j) => {
    const li = document.createElement("li");
    li.className = "queued";
    li.textContent = `job ${j.n}: waiting, ${j.position} ahead`;
    return li;
  }));
  if (items.length && !(state.current && state.jobs.get(state.current)?.status === "running")) {
    $("stop").disabled = false;
  }
}

// ------------------------------------------------------------------ loss chart

function drawLoss() {
  const c = $("loss-chart");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const pts = state.losses.map((v, i) => [i, v]).filter(([, v]) => v !== null && v > 0);
  g.fillStyle = "#678";
  g.font = "11px sans-serif";
  g.fillText("total loss per step (log scale)", c.width - 170, 12);
  if (pts.length < 2) return;
  const ys = pts.map(([, v]) => Math.log10(v));
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const n = state.losses.length;
  const x = (i) => 64 + (c.width - 74) * i / Math.max(1, n - 1);
  const y = (v) => c.height - 14 - (c.height - 34) * (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  g.strokeStyle = "#2a7a4a";
  g.lineWidth = 1.5;
  g.beginPath();
  pts.forEach(([i], k) => (k ? g.lineTo(x(i), y(ys[k])) : g.moveTo(x(i), y(ys[k]))));
  g.stroke();
  g.fillText(fmtNumber(10 ** hi), 2, 28);
  g.fillText(fmtNumber(10 ** lo), 2, c.height - 4);
}

// ------------------------------------------------------------------ wiring

window.addEventListener("DOMContentLoaded", () => {
  $("content-file").addEventListener("change", (e) => {
    if (e.target.files.length) setContent({file: e.target.files[0]});
    e.target.value = "";
  });
  $("style-files").addEventListener("change", (e) => {
    addStyles([...e.target.files].map((file) => ({file})));
    e.target.value = "";
  });
  wireDrop($("content-drop"), (files) => files.length && setContent({file: files[0]}));
  wireDrop($("style-drop"), (files) => addStyles(files.map((file) => ({file}))));
  $("preset").addEventListener("change", applyPreset);
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  connect();
});
