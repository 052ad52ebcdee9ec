"use strict";
// The status page: renders the daemon's status (embedded at load, then /api/status every second)
// and keeps the live picture going (the MJPEG stream, else polling /frame.jpg). Values only ever
// reach the page through textContent, so nothing the device reports can inject markup.
(() => {
  const REFRESH_MS = 1000;
  const POLL_MS = 500;
  const STREAM_RETRY_MS = 30000;
  const DASH = "–";
  const $ = (id) => document.getElementById(id);

  const fmt = {
    pct: (x) => (x == null ? DASH : `${Math.round(x * 100)}%`),
    ms: (x) => (x == null ? DASH : x < 10 ? x.toFixed(1) : Math.round(x).toString()),
    fps: (x) => (x == null ? DASH : x.toFixed(1)),
    time: (ts) => new Date(ts * 1000).toLocaleTimeString(),
    frames: (w) => `${w.first_frame}–${w.last_frame}`,
    duration(seconds) {
      const s = Math.floor(seconds);
      const hms = [Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60), s % 60]
        .map((v) => String(v).padStart(2, "0"))
        .join(":");
      return s >= 86400 ? `${Math.floor(s / 86400)} d ${hms}` : hms;
    },
  };

  // Text, and optionally a state (ok / warn / bad / off) that the stylesheet colours.
  function put(id, text, state = "") {
    const element = $(id);
    element.textContent = text;
    element.dataset.state = state;
  }

  function rows(id, items, cells, empty) {
    const made = items.map((item) => {
      const tr = document.createElement("tr");
      for (const text of cells(item)) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    });
    if (!made.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 5;
      td.className = "muted";
      td.textContent = empty;
      tr.append(td);
      made.push(tr);
    }
    $(id).replaceChildren(...made);
  }

  // The repetition counter: the current activity's set and count (or hold time), and the last
  // repetition's range of motion; the most recent activity stays shown between sets.
  let shownActivity = null;
  function counter(state) {
    const box = $("counter");
    if (!state || !Object.keys(state.activities || {}).length) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const names = Object.keys(state.activities);
    const name = state.current || (names.includes(shownActivity) ? shownActivity : names[0]);
    shownActivity = name;
    const a = state.activities[name];
    put("counter-activity", name);
    put("counter-set", a.set ? `set ${a.set}${a.in_set ? "" : " (ended)"}` : "no set yet");
    put("counter-value", a.kind === "hold" ? `${Math.round(a.hold_s)} s` : String(a.reps));
    const last = a.last_rep;
    const measures = last && last.measures ? Object.entries(last.measures) : [];
    put(
      "counter-last",
      last
        ? `last: ${last.duration_s.toFixed(1)} s` +
            measures.map(([f, m]) => ` · ${f.replace("angle.", "")} ${m.min.toFixed(0)}–${m.max.toFixed(0)}°`).join("")
        : "",
    );
  }

  function render(s) {
    const current = s.current;
    // the bundle's display names, where it gives them; payloads keep the model's labels
    const shown = (label) => (s.model && s.model.label_names && s.model.label_names[label]) || label;
    put("label", current ? shown(current.label) : "no classification yet", current ? "" : "off");
    put("confidence", current ? fmt.pct(current.confidence) : "");
    $("confidence-bar").style.width = current ? `${(current.confidence * 100).toFixed(1)}%` : "0";
    put("person", s.person_present ? "person in view" : "nobody in view", s.person_present ? "ok" : "off");
    put(
      "current-detail",
      current
        ? `${fmt.time(current.ts)} · frames ${fmt.frames(current.window)} · ${fmt.ms(current.latency_ms)} ms`
        : "",
    );
    put("uptime", fmt.duration(s.uptime_s));
    counter(s.activity);

    const model = s.model;
    put("model-id", model ? model.id : "no model loaded", model ? "" : "bad");
    put("model-version", model ? model.version : DASH);
    put("model-runtime", model ? model.runtime : DASH);
    put(
      "model-status",
      model ? (model.detail ? `${model.status}: ${model.detail}` : model.status) : DASH,
      model ? (model.status === "ok" ? "ok" : "warn") : "",
    );

    put("camera-state", s.camera.state, s.frames_flowing ? "ok" : "bad");
    put("camera-detail", [s.frames_flowing ? "" : "no frames", s.camera.detail].filter(Boolean).join(" · "));
    put("frames-captured", String(s.counters.frames_captured));
    put("frames-dropped", String(s.counters.frames_dropped), s.counters.frames_dropped ? "warn" : "");
    put("frames-processed", String(s.counters.frames_processed));

    const mqtt = s.mqtt;
    put(
      "mqtt-state",
      !mqtt.enabled ? "disabled" : mqtt.connected ? "connected" : "disconnected",
      !mqtt.enabled ? "off" : mqtt.connected ? "ok" : "bad",
    );
    put("mqtt-broker", mqtt.broker || DASH);
    put("mqtt-detail", mqtt.detail || "");
    put("outbox-depth", `${s.outbox.depth} waiting`);
    put("outbox-dropped", String(s.outbox.dropped), s.outbox.dropped ? "warn" : "");

    const latency = s.latency_ms || {};
    for (const q of ["p50", "p95", "p99"]) {
      put(`latency-${q}`, fmt.ms(latency[q]));
    }
    put("classifications", String(s.counters.classifications));

    rows("stages", Object.entries(s.stages), ([name, t]) => [
      name, fmt.fps(t.fps), fmt.ms(t.p50_ms), fmt.ms(t.p95_ms), fmt.ms(t.p99_ms),
    ], "no timings yet");
    rows("recent", s.recent, (p) => [
      fmt.time(p.ts), shown(p.label), fmt.pct(p.confidence), fmt.frames(p.window), fmt.ms(p.latency_ms),
    ], "no classifications yet");
  }

  // The live picture. A stream that fails (no frame yet, every stream slot taken, the daemon
  // restarting) falls back to polling single frames, and the stream is tried again later.
  const live = (() => {
    const img = $("live");
    const view = $("view");
    let polling = false;
    let since = 0;
    let timer = 0;
    const poll = () => { img.src = `/frame.jpg?t=${Date.now()}`; };
    function start() {
      clearTimeout(timer);
      polling = false;
      img.classList.remove("broken");
      img.src = `/stream.mjpg?t=${Date.now()}`;
    }
    img.addEventListener("load", () => {
      img.classList.remove("broken");
      view.classList.remove("waiting");
      document.body.classList.toggle("wide-view", img.naturalWidth > img.naturalHeight);
      if (polling) timer = setTimeout(Date.now() - since > STREAM_RETRY_MS ? start : poll, POLL_MS);
    });
    img.addEventListener("error", () => {
      img.classList.add("broken");
      view.classList.add("waiting");
      if (!polling) {
        polling = true;
        since = Date.now();
      }
      clearTimeout(timer);
      timer = setTimeout(poll, REFRESH_MS);
    });
    return { start };
  })();

  let offline = false;
  async function refresh() {
    try {
      const response = await fetch("/api/status", { cache: "no-store", signal: AbortSignal.timeout(3 * REFRESH_MS) });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      if (offline) live.start(); // the daemon is back: reconnect the picture as well
      offline = false;
      put("conn", "live", "ok");
    } catch {
      offline = true;
      put("conn", "offline", "bad");
    }
    document.body.classList.toggle("stale", offline);
    setTimeout(refresh, REFRESH_MS);
  }

  render(JSON.parse($("initial-status").textContent));
  live.start();
  setTimeout(refresh, REFRESH_MS);
})();
