"use strict";
// The status page: renders the daemon's status (embedded at load, then /api/status every second)
// and keeps the live picture going (the MJPEG stream, else polling /frame.jpg). Values only ever
// reach the page through textContent, so nothing the device reports can inject markup.
(() => {
  const REFRESH_MS = 1000;
  const POLL_MS = 500;
  const POSE_MS = 200;
  const STREAM_RETRY_MS = 30000;
  const DASH = "–";
  const $ = (id) => document.getElementById(id);

  const fmt = {
    pct: (x) => (x == null ? DASH : `${Math.round(x * 100)}%`),
    ms: (x) => (x == null ? DASH : x < 10 ? x.toFixed(1) : Math.round(x).toString()),
    fps: (x) => (x == null ? DASH : x.toFixed(1)),
    time: (ts) => new Date(ts * 1000).toLocaleTimeString(),
    frames: (w) => `${w.first_frame}–${w.last_frame}`,
    who: (p) => `#${p.person}${p.station ? ` · ${p.station}` : ""}`,
    duration(seconds) {
      const s = Math.floor(seconds);
      const hms = [Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60), s % 60]
        .map((v) => String(v).padStart(2, "0"))
        .join(":");
      return s >= 86400 ? `${Math.floor(s / 86400)} d ${hms}` : hms;
    },
  };

  // Text, and optionally a state (ok / warn / bad / off) that the stylesheet colours. The title
  // repeats the text: a long value (a version, an address) is cut with an ellipsis, not wrapped.
  function put(id, text, state = "") {
    const element = $(id);
    element.textContent = text;
    element.title = text;
    element.dataset.state = state;
  }

  // A label that may wrap only after "_", "-", "." or "/" (Traffic_<wbr>BackStop), never mid-word.
  function breakable(text) {
    return text.split(/(?<=[_\-./])/).flatMap((part, i) => (i ? [document.createElement("wbr"), part] : [part]));
  }

  // Table rows: a cell is text, or a list of nodes (a breakable label); cells from index
  // `detailFrom` on are technical details, shown with the details toggle.
  function rows(id, items, cells, empty, detailFrom = Infinity) {
    const made = items.map((item) => {
      const tr = document.createElement("tr");
      cells(item).forEach((cell, i) => {
        const td = document.createElement("td");
        if (Array.isArray(cell)) td.append(...cell);
        else td.textContent = cell;
        if (i >= detailFrom) td.className = "detail";
        tr.append(td);
      });
      return tr;
    });
    if (!made.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 6;
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

  // With several people classified: one line per person with their current activity and count.
  function everyone(state) {
    const people = (state && state.people) || [];
    const box = $("people");
    box.hidden = people.length < 2;
    box.replaceChildren(...people.map((p) => {
      const li = document.createElement("li");
      const a = p.current ? p.activities[p.current] : null;
      li.textContent = `#${p.person} ` + (a ? `${p.current} ${a.kind === "hold" ? `${Math.round(a.hold_s)} s` : a.reps}` : "no activity");
      return li;
    }));
  }

  function render(s) {
    const current = s.current;
    // the bundle's display names, where it gives them; payloads keep the model's labels
    const shown = (label) => (s.model && s.model.label_names && s.model.label_names[label]) || label;
    put("label", "", current ? "" : "off");
    $("label").append(...breakable(current ? shown(current.label) : s.model ? "no classification yet" : "no model yet"));
    put("confidence", current ? fmt.pct(current.confidence) : "");
    $("confidence-bar").style.width = current ? `${(current.confidence * 100).toFixed(1)}%` : "0";
    put("person", s.person_present ? "person in view" : "nobody in view", s.person_present ? "ok" : "off");
    put("current-when", current ? `at ${fmt.time(current.ts)}` : "");
    put("current-detail", current ? ` · frames ${fmt.frames(current.window)} · ${fmt.ms(current.latency_ms)} ms` : "");
    put("uptime", fmt.duration(s.uptime_s));
    counter(s.activity);
    everyone(s.activity);

    const model = s.model;
    put("model-id", model ? model.id : "no model loaded", model ? "" : "bad");
    put("model-version", model ? model.version : DASH);
    put("model-runtime", model ? model.runtime : DASH);
    // A refused push leaves the previous model running: say both, so amber does not read as broken.
    const running = model ? `running ${model.version}` : "";
    const said = {
      ok: running,
      rejected: `${running}; refused a new model: ${model && model.detail}`,
      rolled_back: `${running} again (rolled back): ${model && model.detail}`,
    };
    put("model-status", model ? said[model.status] || `${model.status}: ${model.detail}` : DASH,
      model ? (model.status === "ok" ? "ok" : "warn") : "");
    $("model-hint").hidden = Boolean(model);

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
    // A failing SD card: results go on from memory, which a restart would lose; say so plainly.
    const storage = s.storage || { ok: true, mode: "off" };
    put("storage-state", storage.ok ? (storage.mode === "off" ? "not used" : "ok") : "failing",
      storage.ok ? (storage.mode === "off" ? "off" : "ok") : "bad");
    put("storage-detail", storage.ok ? "" : `${storage.detail}: results are kept in memory and sent from there`, "bad");

    const latency = s.latency_ms || {};
    for (const q of ["p50", "p95", "p99"]) {
      put(`latency-${q}`, fmt.ms(latency[q]));
    }
    put("classifications", String(s.counters.classifications));

    rows("stages", Object.entries(s.stages), ([name, t]) => [
      name, fmt.fps(t.fps), fmt.ms(t.p50_ms), fmt.ms(t.p95_ms), fmt.ms(t.p99_ms),
    ], "no timings yet");
    rows("recent", s.recent, (p) => [
      fmt.time(p.ts), breakable(shown(p.label)), fmt.who(p), fmt.pct(p.confidence), fmt.frames(p.window), fmt.ms(p.latency_ms),
    ], "no classifications yet", 4);
  }

  // The live picture. A stream that fails (no frame yet, every stream slot taken, the daemon
  // restarting) falls back to polling single frames, and the stream is tried again later.
  const live = (() => {
    const img = $("live");
    const view = $("view");
    let polling = false;
    let since = 0;
    let timer = 0;
    // banner=0: the label is shown beside the picture, from the same status as the rest
    const poll = () => { img.src = `/frame.jpg?banner=0&t=${Date.now()}`; };
    function start() {
      clearTimeout(timer);
      polling = false;
      img.classList.remove("broken");
      img.src = `/stream.mjpg?banner=0&t=${Date.now()}`;
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

  // Privacy mode: no camera image leaves the device, so the page draws everyone's skeleton from
  // /api/pose on a blank canvas (and the stations' outlines), a few times a second.
  const skeletons = (() => {
    const canvas = $("skeletons");
    const view = $("view");
    const COLORS = ["#ffa500", "#00c8ff", "#9be15d", "#ff6b9a", "#c9a0ff"];
    function draw(pose) {
      const ctx = canvas.getContext("2d");
      canvas.width = pose.width || 640;
      canvas.height = pose.height || 480;
      ctx.fillStyle = "#161616";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      const line = Math.max(2, canvas.width / 240);
      ctx.lineWidth = line;
      ctx.font = `${Math.max(12, canvas.width / 40)}px sans-serif`;
      for (const station of pose.stations) {
        ctx.strokeStyle = "#50dc78";
        ctx.beginPath();
        station.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.closePath();
        ctx.stroke();
        ctx.fillStyle = "#50dc78";
        ctx.fillText(station.name, station.polygon[0][0] + 4, station.polygon[0][1] + 16);
      }
      for (const person of pose.people) {
        const seen = (j) => j[0] != null && j[1] != null && j[2] != null && j[2] >= 0.5;
        ctx.strokeStyle = COLORS[(person.person - 1) % COLORS.length];
        ctx.beginPath();
        for (const [a, b] of pose.bones) {
          const [p, q] = [person.points[a], person.points[b]];
          if (seen(p) && seen(q)) {
            ctx.moveTo(p[0], p[1]);
            ctx.lineTo(q[0], q[1]);
          }
        }
        ctx.stroke();
        const visible = person.points.filter(seen);
        if (visible.length) {
          const top = Math.min(...visible.map((j) => j[1]));
          const x = visible.reduce((sum, j) => sum + j[0], 0) / visible.length;
          ctx.fillStyle = "#ffffff";
          ctx.textAlign = "center";
          ctx.fillText(`#${person.person}${person.label ? ` ${person.label}` : ""}`, x, Math.max(16, top - 12));
          ctx.textAlign = "start";
        }
      }
      view.classList.remove("waiting");
      document.body.classList.toggle("wide-view", canvas.width > canvas.height);
    }
    async function poll() {
      try {
        const response = await fetch("/api/pose", { cache: "no-store", signal: AbortSignal.timeout(3 * REFRESH_MS) });
        if (response.ok) draw(await response.json());
      } catch {
        // the status poll shows the connection state; keep trying
      }
      setTimeout(poll, POSE_MS);
    }
    return {
      start() {
        canvas.hidden = false;
        $("live").hidden = true;
        poll();
      },
    };
  })();

  // The picture starts with the first frame the daemon has (asking before would only fail).
  let pictureStarted = false;
  function picture(s) {
    if (pictureStarted || !s.counters.frames_processed) return;
    pictureStarted = true;
    if (s.privacy) skeletons.start();
    else live.start();
  }

  let offline = false;
  async function refresh() {
    try {
      const response = await fetch("/api/status", { cache: "no-store", signal: AbortSignal.timeout(3 * REFRESH_MS) });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const s = await response.json();
      render(s);
      if (offline && pictureStarted && !s.privacy) live.start(); // the daemon is back: reconnect the picture
      picture(s);
      offline = false;
      put("conn", "live", "ok");
    } catch {
      offline = true;
      put("conn", "offline", "bad");
    }
    document.body.classList.toggle("stale", offline);
    setTimeout(refresh, REFRESH_MS);
  }

  // The details toggle: plain words for the owner by default, the technician's numbers on demand.
  const toggle = $("details-toggle");
  function details(on) {
    document.body.classList.toggle("details", on);
    toggle.setAttribute("aria-pressed", String(on));
    try { localStorage.setItem("details", on ? "1" : ""); } catch { /* private mode: not remembered */ }
  }
  toggle.addEventListener("click", () => details(!document.body.classList.contains("details")));
  try { details(localStorage.getItem("details") === "1"); } catch { details(false); }

  const initial = JSON.parse($("initial-status").textContent);
  render(initial);
  picture(initial);
  setTimeout(refresh, REFRESH_MS);
})();
