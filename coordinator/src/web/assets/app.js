// nnunet-rs dashboard: plain JS, no build step. Pages by path: /runs, /run/<id>, /workers.
// Data arrive by server-sent events: /api/live (runs and workers snapshots) and
// /api/runs/<id>/events (the run's journal, replayed from the start, then live).
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const h = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(k == null ? "" : String(k)));
  return e;
};
const fmt = (x, d = 4) => (x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(d));
const bytes = (b) => (b == null ? "-" : b >= 1e9 ? (b / 1e9).toFixed(2) + " GB" : (b / 1e6).toFixed(0) + " MB");
const secs = (s) => {
  if (s == null || !isFinite(s)) return "-";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m` : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
};
const stateTag = (s) => h("span", { class: `state s-${s}` }, s);
let me = { can_steer: false };

function setConn(text) { $("#conn").textContent = text; }

async function steer(url, what) {
  if (!confirm(what + "?")) return;
  const r = await fetch(url, { method: "POST", headers: { "x-nnunet-steer": "1" }, credentials: "same-origin" });
  const msg = await r.text();
  if (!r.ok) alert(`${what} refused (${r.status}): ${msg}`);
}

// Progress of a run: finished tasks, plus the epochs of training tasks in flight.
function progress(run) {
  if (!run.tasks.length) return 0;
  let done = 0;
  for (const t of run.tasks) {
    if (t.state === "DONE") done += 1;
    else if (t.kind === "train" && t.epoch && t.epochs) done += t.epoch / t.epochs;
  }
  return done / run.tasks.length;
}

// Time left for training: the slowest fold's remaining epochs at its own pace (folds run in
// parallel when there are workers for them; pending folds count with the mean pace).
function eta(run) {
  const train = run.tasks.filter((t) => t.kind === "train");
  const paces = train.filter((t) => t.epoch_seconds).map((t) => t.epoch_seconds);
  if (!paces.length || ["DONE", "FAILED", "CANCELLED"].includes(run.state)) return null;
  const pace = paces.reduce((a, b) => a + b, 0) / paces.length;
  let worst = 0;
  for (const t of train) {
    if (t.state === "DONE") continue;
    const left = (t.epochs || run.epochs) - (t.epoch || 0);
    worst = Math.max(worst, left * (t.epoch_seconds || pace));
  }
  return worst;
}

// ------------------------------------------------------------------ runs page
function runsPage(main) {
  main.append(h("h1", {}, "Runs"));
  const body = h("tbody", { id: "runs" });
  main.append(h("table", {}, h("thead", {}, h("tr", {}, ["run", "name", "dataset", "state", "progress", "ETA", "CV Dice"].map((c) => h("th", {}, c)))), body));
  live({
    runs(runs) {
      body.replaceChildren(...runs.slice().reverse().map((r) => {
        const p = progress(r);
        const cv = r.summary ? r.summary.cv_foreground_dice : null;
        return h("tr", { "data-run": r.id, "data-state": r.state },
          h("td", {}, h("a", { href: `/run/${encodeURIComponent(r.id)}` }, r.id)), h("td", {}, r.name), h("td", {}, r.dataset),
          h("td", {}, stateTag(r.state)),
          h("td", {}, h("span", { class: "bar" }, h("span", { style: `width:${(100 * p).toFixed(1)}%` })), ` ${(100 * p).toFixed(0)}%`),
          h("td", { class: "num" }, secs(eta(r))), h("td", { class: "num" }, fmt(cv)));
      }));
      if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 7 }, "no runs yet: submit one with `nnunet submit` or `nnunet run`")));
    },
  });
}

// ------------------------------------------------------------------ workers page
function workersPage(main) {
  main.append(h("h1", {}, "Workers"));
  const body = h("tbody", { id: "workers" });
  const cols = ["worker", "host", "device", "device name", "task", "GPU util", "GPU memory", "RSS", "loader wait/epoch", "step", "s/epoch", "last heartbeat"];
  main.append(h("table", {}, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))), body));
  live({
    workers(ws) {
      const now = Date.now();
      body.replaceChildren(...ws.map((w) => h("tr", { "data-worker": w.id },
        h("td", {}, w.id), h("td", {}, w.host), h("td", {}, w.device), h("td", {}, w.device_name || "-"), h("td", {}, w.task || "idle"),
        h("td", { class: "num" }, w.gpu_util_percent == null ? "-" : `${w.gpu_util_percent}%`),
        h("td", { class: "num" }, w.gpu_memory_total_bytes == null ? "-" : `${bytes(w.gpu_memory_used_bytes)} / ${bytes(w.gpu_memory_total_bytes)}`),
        h("td", { class: "num" }, bytes(w.rss_bytes)),
        h("td", { class: "num" }, w.loader_wait_seconds == null ? "-" : `${fmt(w.loader_wait_seconds, 2)}s`),
        h("td", { class: "num" }, w.step_seconds == null ? "-" : `${fmt(w.step_seconds, 3)}s`),
        h("td", { class: "num" }, secs(w.epoch_seconds)),
        h("td", { class: "num" }, `${secs((now - w.last_seen_ms) / 1000)} ago`))));
      if (!ws.length) body.append(h("tr", {}, h("td", { colspan: cols.length }, "no workers registered")));
    },
  });
}

function live(handlers) {
  const es = new EventSource("/api/live");
  es.onopen = () => setConn("live");
  es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "disconnected (reload to log in again)" : "reconnecting…");
  for (const [name, f] of Object.entries(handlers)) es.addEventListener(name, (m) => f(JSON.parse(m.data)));
}

// ------------------------------------------------------------------ run page
const SERIES = [
  { label: "train loss", stroke: "#1f5fbf", width: 2, scale: "loss" },
  { label: "val loss", stroke: "#d0312d", width: 2, scale: "loss" },
  { label: "pseudo Dice", stroke: "#3aa655aa", width: 1, scale: "dice" },
  { label: "pseudo Dice EMA", stroke: "#1b7f3a", width: 3, scale: "dice" },
];
const SERIES2 = [
  { label: "LR", stroke: "#7b3fbf", width: 2, scale: "lr" },
  { label: "epoch s", stroke: "#c77700", width: 2, scale: "s" },
];

function foldChart(el, series, axes) {
  const opts = {
    width: Math.max(300, el.clientWidth || 440), height: 170, legend: { live: false },
    scales: { x: { time: false } },
    series: [{ label: "epoch" }, ...series],
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, ...axes],
  };
  return new uPlot(opts, [[], ...series.map(() => [])], el);
}

function runPage(main, id) {
  const head = h("div", {});
  const folds = h("div", { class: "folds", id: "folds" });
  const tasks = h("tbody", { id: "tasks" });
  const summary = h("div", { id: "summary" });
  const log = h("ol", { class: "log", id: "log" });
  main.append(head, h("h2", {}, "Folds"), folds, h("h2", {}, "Cross-validation"), summary,
    h("h2", {}, "Tasks"), h("table", {}, h("thead", {}, h("tr", {}, ["fold", "kind", "state", "attempt", "worker", "device", "epoch", "error"].map((c) => h("th", {}, c)))), tasks),
    h("h2", {}, "Events"), log);
  const cards = new Map(); // fold -> {data, data2, chart, chart2, el}
  let run = null, pending = null, dirty = new Set(), raf = 0;

  function card(fold) {
    if (cards.has(fold)) return cards.get(fold);
    const c1 = h("div", {}), c2 = h("div", {});
    const el = h("section", { class: "fold", "data-fold": fold, "data-points": 0 },
      h("h3", {}, `fold ${fold}`, h("span", { class: "fstate" }), h("span", { class: "meta" }),
        me.can_steer ? h("button", { class: "retry", onclick: () => steer(`/api/runs/${encodeURIComponent(id)}/folds/${fold}/retry`, `Retry fold ${fold}`) }, "Retry fold") : ""),
      c1, c2);
    folds.append(el);
    const c = {
      el, x: [], s: [[], [], [], []], s2: [[], []],
      chart: foldChart(c1, SERIES, [{ scale: "loss", label: "loss" }, { scale: "dice", side: 1, label: "pseudo Dice", grid: { show: false } }]),
      chart2: foldChart(c2, SERIES2, [{ scale: "lr", label: "LR", size: 70 }, { scale: "s", side: 1, label: "s/epoch", grid: { show: false } }]),
    };
    cards.set(fold, c);
    return c;
  }

  function addMetrics(fold, m) {
    const c = card(fold);
    // A resumed fold repeats epochs after its checkpoint: keep the newest values.
    let i = c.x.findIndex((e) => e >= m.epoch + 1);
    if (i < 0) i = c.x.length;
    c.x.length = i; c.s.forEach((a) => (a.length = i)); c.s2.forEach((a) => (a.length = i));
    c.x.push(m.epoch + 1);
    [m.train_loss, m.val_loss, m.mean_fg_dice, m.ema_fg_dice].forEach((v, k) => c.s[k].push(v));
    [m.lr, m.epoch_seconds].forEach((v, k) => c.s2[k].push(v));
    c.el.setAttribute("data-points", c.x.length);
    $(".meta", c.el).textContent = `epoch ${m.epoch + 1}/${m.epochs} · EMA Dice ${fmt(m.ema_fg_dice)} · ${fmt(m.epoch_seconds, 1)} s/epoch · loader wait ${fmt(m.dataloader_wait_seconds, 2)} s`;
    dirty.add(fold);
    if (!raf) raf = requestAnimationFrame(() => {
      raf = 0;
      for (const f of dirty) { const c = cards.get(f); c.chart.setData([c.x.slice(), ...c.s.map((a) => a.slice())]); c.chart2.setData([c.x.slice(), ...c.s2.map((a) => a.slice())]); }
      dirty.clear();
    });
  }

  function render() {
    head.replaceChildren(h("h1", {}, `${run.name} `, stateTag(run.state)),
      h("div", { class: "actions" }, `run ${run.id} · dataset ${run.dataset} · ${run.folds.length} folds · ${run.epochs} epochs · ETA ${secs(eta(run))} `,
        me.can_steer && !["DONE", "FAILED", "CANCELLED"].includes(run.state) ? h("button", { id: "cancel", onclick: () => steer(`/api/runs/${encodeURIComponent(id)}/cancel`, `Cancel run ${id}`) }, "Cancel run") : ""),
      run.error ? h("p", { class: "err" }, run.error) : "");
    for (const f of run.folds) {
      const c = card(f);
      const tr = run.tasks.find((t) => t.fold === f && t.kind === "train");
      const st = run.tasks.filter((t) => t.fold === f).map((t) => `${t.kind} ${t.state}`).join(" · ");
      $(".fstate", c.el).replaceChildren(tr ? stateTag(tr.state) : "");
      // Retry re-queues a fold's failed or cancelled tasks; offer it only where there are some.
      const retry = $(".retry", c.el);
      if (retry) retry.hidden = !run.tasks.some((t) => t.fold === f && (t.state === "FAILED" || t.state === "CANCELLED"));
      c.el.setAttribute("data-state", tr ? tr.state : "");
      c.el.title = st;
    }
    tasks.replaceChildren(...run.tasks.map((t) => h("tr", { "data-task": t.id },
      h("td", {}, t.fold == null ? "-" : t.fold), h("td", {}, t.kind), h("td", {}, stateTag(t.state)), h("td", { class: "num" }, t.attempt),
      h("td", {}, t.worker || "-"), h("td", {}, t.device || "-"), h("td", { class: "num" }, t.epoch ? `${t.epoch}/${t.epochs}` : "-"),
      h("td", { class: "err" }, t.error))));
    renderSummary(run.summary);
  }

  function renderSummary(s) {
    if (!s) { summary.replaceChildren(h("p", {}, "written when every fold is validated")); return; }
    const names = s.label_names || {};
    const labels = Object.keys(s.cv_dice_per_label || {});
    const pp = s.cv_dice_per_label_postprocessed || {};
    const rows = labels.map((l) => h("tr", {}, h("td", {}, `${l} ${names[l] || ""}`), h("td", { class: "num" }, fmt(s.cv_dice_per_label[l])), h("td", { class: "num" }, fmt(pp[l]))));
    rows.push(h("tr", {}, h("th", {}, "foreground mean"), h("td", { class: "num" }, fmt(s.cv_foreground_dice)), h("td", { class: "num" }, fmt(s.cv_foreground_dice_postprocessed))));
    const perFold = Object.entries(s.fold_foreground_dice || {}).map(([f, d]) => `fold ${f}: ${fmt(d)}`).join(" · ");
    const ens = s.test_ensemble ? h("p", {}, `test-set ensemble of ${s.folds.length} folds: ${s.test_ensemble.cases} cases in ${s.test_ensemble.folder}`) : "";
    summary.replaceChildren(h("table", { class: "summary", id: "cv" }, h("thead", {}, h("tr", {}, h("th", {}, "label"), h("th", {}, "CV Dice"), h("th", {}, "postprocessed"))), h("tbody", {}, rows)),
      h("p", {}, perFold), s.postprocessing && s.postprocessing.length ? h("p", {}, `postprocessing: ${s.postprocessing.join("; ")}`) : "", ens);
  }

  async function refresh() {
    pending = null;
    const r = await fetch(`/api/runs/${encodeURIComponent(id)}`, { credentials: "same-origin" });
    if (r.status === 401) { location.href = "/login"; return; }
    if (!r.ok) { head.replaceChildren(h("p", { class: "err" }, await r.text())); return; }
    run = await r.json();
    render();
  }
  const soon = () => { if (!pending) pending = setTimeout(refresh, 300); };

  function logLine(e) {
    const t = new Date(e.ts_ms).toLocaleTimeString();
    const who = e.fold != null ? `fold ${e.fold}` : "run";
    let text = e.text;
    if (e.kind === "task") text = `${e.task_kind} ${e.text}${e.worker ? ` (worker ${e.worker}, attempt ${e.attempt})` : ""}`;
    if (e.kind === "summary") text = "cross-validation summary written";
    log.prepend(h("li", { "data-seq": e.seq }, `${t}  ${who}  ${text}`));
    while (log.childElementCount > 500) log.lastChild.remove();
  }

  refresh().then(() => {
    const es = new EventSource(`/api/runs/${encodeURIComponent(id)}/events`);
    es.onopen = () => setConn("live");
    es.onerror = () => setConn(es.readyState === EventSource.CLOSED ? "disconnected (reload to log in again)" : "reconnecting…");
    es.onmessage = (m) => {
      const e = JSON.parse(m.data);
      if (e.kind === "metrics") addMetrics(e.fold, e.metrics);
      else { logLine(e); soon(); }
    };
    es.addEventListener("end", () => { es.close(); setConn("run finished"); soon(); });
  });
}

// ------------------------------------------------------------------ boot
(async function boot() {
  const r = await fetch("/api/me", { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login"; return; }
  me = await r.json();
  const main = $("#main");
  const p = location.pathname;
  if (p.startsWith("/run/")) runPage(main, decodeURIComponent(p.slice(5)));
  else if (p === "/workers") workersPage(main);
  else runsPage(main);
})();
