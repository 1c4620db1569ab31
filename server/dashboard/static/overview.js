/* Overview: today's batch, last night's jobs (polled while the night runs), recording days.
 *
 * API: GET /batches, GET /nights, GET /nights/{id} (falls back to GET /jobs?night=), GET /sessions.
 */
(function () {
  "use strict";
  const POLL_MS = Math.max(500, Number(IT.param("poll")) || 3000);
  const ACTIVE = new Set(["queued", "running", "waiting"]);

  function state(s) {
    return IT.el("span", { class: "state state-" + String(s || "unknown").toLowerCase() }, [s || "unknown"]);
  }

  function progress(job) {
    const p = Math.max(0, Math.min(1, Number(job.progress) || 0));
    return IT.el("span", {}, [
      IT.el("span", { class: "progress", title: Math.round(p * 100) + "%" }, [IT.el("span", { style: { width: p * 100 + "%" } })]),
      " " + Math.round(p * 100) + "%",
    ]);
  }

  function newest(list, key) {
    return list.slice().sort((a, b) => String(b[key] || "").localeCompare(String(a[key] || "")))[0];
  }

  async function loadBatches() {
    let batches;
    try {
      batches = await IT.fetchAll("/batches", {}, 200);
    } catch (e) {
      IT.fill("batch-today", IT.el("span", { class: "note" }, ["no batch information"]));
      IT.showError(e, "batch-card", "batches");
      return;
    }
    if (!batches.length) {
      IT.fill("batch-today", IT.el("span", { class: "note" }, ["no batch has been built yet"]));
      return;
    }
    const byTime = (b) => b.published_at || b.created_at || "";
    batches.sort((a, b) => String(byTime(b)).localeCompare(String(byTime(a))));
    const published = batches.filter((b) => b.state === "published");
    const today = published[0] || batches[0];
    const dl = IT.el("dl", { class: "kv", id: "today-batch" }, [
      IT.el("dt", {}, ["batch"]), IT.el("dd", { id: "today-batch-id" }, [today.batch_id]),
      IT.el("dt", {}, ["state"]), IT.el("dd", {}, [state(today.state)]),
      IT.el("dt", {}, ["rig"]), IT.el("dd", {}, [IT.fmt(today.rig_id)]),
      IT.el("dt", {}, ["day"]), IT.el("dd", {}, [IT.fmt(today.day)]),
      IT.el("dt", {}, ["model"]), IT.el("dd", {}, [IT.fmt(today.model_version)]),
      IT.el("dt", {}, ["published"]), IT.el("dd", {}, [IT.fmtTime(today.published_at)]),
      IT.el("dt", {}, ["images"]), IT.el("dd", {}, [IT.fmt(today.n_images)]),
    ]);
    const link = IT.el("a", { href: IT.cfg.prefix + "/images?batch=" + encodeURIComponent(today.batch_id) }, ["see its images"]);
    IT.fill("batch-today", [dl, link]);
    IT.fill(
      "batch-list",
      IT.table(
        [
          ["batch", "batch_id"],
          ["rig", "rig_id"],
          ["day", "day"],
          ["state", (b) => state(b.state)],
          ["model", "model_version"],
          ["published", (b) => IT.fmtTime(b.published_at)],
        ],
        batches.slice(0, 10),
        { id: "batches-table" }
      )
    );
  }

  async function nightJobs(night) {
    if (Array.isArray(night.jobs)) return night.jobs;
    return IT.fetchAll("/jobs", { night: night.id }, 500);
  }

  function renderNight(night, jobs) {
    IT.fill("night-state", state(night.state));
    const bits = [
      IT.el("dt", {}, ["night"]), IT.el("dd", {}, [String(night.id)]),
      IT.el("dt", {}, ["session"]), IT.el("dd", {}, [IT.fmt(night.session_id || night.session)]),
      IT.el("dt", {}, ["started"]), IT.el("dd", {}, [IT.fmtTime(night.created_at)]),
      IT.el("dt", {}, ["finished"]), IT.el("dd", {}, [IT.fmtTime(night.finished_at)]),
      IT.el("dt", {}, ["batch"]), IT.el("dd", {}, [IT.fmt(night.batch_id || night.batch)]),
      IT.el("dt", {}, ["progress"]), IT.el("dd", {}, [progress(night)]),
      IT.el("dt", {}, ["partial"]), IT.el("dd", {}, [IT.fmt(night.partial)]),
    ];
    if (night.note) bits.push(IT.el("dt", {}, ["note"]), IT.el("dd", {}, [night.note]));
    const parts = [IT.el("dl", { class: "kv" }, bits)];
    if (night.error) parts.push(IT.el("div", { class: "job-error night-error" }, ["night failed: " + night.error]));
    IT.fill("night-summary", parts);
    const rows = jobs.slice().sort((a, b) => (a.id || 0) - (b.id || 0));
    IT.fill(
      "night-jobs",
      IT.table(
        [
          ["job", (j) => j.kind + (j.id !== undefined ? " #" + j.id : "")],
          ["state", (j) => state(j.state)],
          ["progress", (j) => progress(j)],
          ["message", (j) => j.progress_message || ""],
          ["attempts", (j) => (j.attempts !== undefined ? j.attempts + (j.max_attempts ? "/" + j.max_attempts : "") : "—")],
          ["error", (j) => (j.error ? IT.el("span", { class: "job-error" }, [j.error]) : "")],
        ],
        rows,
        { id: "jobs-table" }
      )
    );
    IT.$("night-updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
    return rows.some((j) => ACTIVE.has(j.state)) || ACTIVE.has(night.state);
  }

  let timer = null;
  async function refreshNight() {
    IT.clearErrors("night-card");
    let active = false;
    try {
      const nights = IT.items(await IT.api("/nights", { limit: 20, offset: 0 }));
      if (!nights.length) {
        IT.fill("night-summary", IT.el("span", { class: "note" }, ["no night has run yet"]));
        IT.fill("night-jobs", []);
      } else {
        const last = newest(nights, "created_at");
        const night = await IT.api("/nights/" + encodeURIComponent(last.id));
        active = renderNight(night, await nightJobs(night));
      }
    } catch (e) {
      IT.showError(e, "night-card", "last night");
    }
    // Poll fast while jobs run; otherwise slowly, to pick up the next night.
    timer = setTimeout(refreshNight, active ? POLL_MS : POLL_MS * 5);
    IT.$("poll-s").textContent = String((active ? POLL_MS : POLL_MS * 5) / 1000);
  }

  async function loadSessions() {
    try {
      const sessions = await IT.fetchAll("/sessions", {}, 1000);
      sessions.sort((a, b) => (b.day || 0) - (a.day || 0) || String(b.created_at).localeCompare(String(a.created_at)));
      IT.fill(
        "sessions",
        sessions.length
          ? IT.table(
              [
                ["session", "session_id"],
                ["day", "day"],
                ["subject", "subject"],
                ["rig", "rig_id"],
                ["batch", "batch_id"],
                ["state", (s) => state(s.state)],
                ["spike data", (s) => (s.has_data === undefined ? null : s.has_data)],
                ["duration (min)", (s) => (s.duration_s ? s.duration_s / 60 : null)],
                ["recorded", (s) => IT.fmtTime(s.created_at)],
              ],
              sessions,
              { id: "sessions-table" }
            )
          : IT.el("span", { class: "note" }, ["no recording day yet"])
      );
    } catch (e) {
      IT.showError(e, "sessions-card", "recording days");
    }
  }

  IT.page(async () => {
    await Promise.all([loadBatches(), refreshNight(), loadSessions()]);
    window.addEventListener("beforeunload", () => clearTimeout(timer));
  });
})();
