/* Overview: the morning headline (population sensitivity vs each model, last night's outcome,
 * whether the rig has shown today's batch, gated and drifting sites), today's batch, last
 * night's jobs (polled while the night runs), recording days.
 *
 * API: GET /batches, GET /nights, GET /nights/{id} (falls back to GET /jobs?night=), GET /sessions,
 * GET /analysis/sensitivity/summary, GET /model-versions, GET /model-versions/{version}.
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

  const shared = {};

  async function loadBatches() {
    let batches;
    try {
      batches = await IT.fetchAll("/batches", {}, 200);
    } catch (e) {
      IT.fill("batch-today", IT.el("span", { class: "note" }, ["no batch information"]));
      IT.showError(e, "batch-card", "batches");
      return null;
    }
    if (!batches.length) {
      IT.fill("batch-today", IT.el("span", { class: "note" }, ["no batch has been built yet"]));
      return batches;
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
    return batches;
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

  /* "complete" with the time it was closed, or "open" and what that means for the night. */
  function sessionState(s) {
    if (s.state === "complete") {
      return IT.el("span", {}, [state("complete"), " ", IT.el("span", { class: "note" }, [IT.fmtTime(s.completed_at)])]);
    }
    const why = s.has_data ? "spike data uploaded; not marked complete" : "no spike data yet";
    return IT.el("span", {}, [state(s.state || "open"), " ", IT.el("span", { class: "note" }, [why])]);
  }

  async function loadSessions() {
    try {
      const sessions = await IT.fetchAll("/sessions", {}, 1000);
      shared.sessions = sessions;
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
                ["state", (s) => sessionState(s)],
                ["spike data", (s) => (s.has_data === undefined ? null : s.has_data)],
                ["duration (min)", (s) => (s.duration_s ? s.duration_s / 60 : null)],
                ["recorded", (s) => IT.fmtTime(s.created_at)],
              ],
              sessions,
              { id: "sessions-table" }
            )
          : IT.el("span", { class: "note" }, ["no recording day yet"])
      );
      return sessions;
    } catch (e) {
      IT.showError(e, "sessions-card", "recording days");
      return null;
    }
  }

  /* ---------- the morning headline ---------- */

  function note(text) {
    return IT.el("span", { class: "note" }, [text]);
  }

  function ci(p) {
    return p.ci_low === null || p.ci_low === undefined ? "—" : "[" + IT.fmt(p.ci_low) + ", " + IT.fmt(p.ci_high) + "]";
  }

  /* IT's sign-corrected population figure on the newest day beside each candidate's, at one epsilon. */
  function drawHeadlineSensitivity(summary, lineup) {
    const curves = (summary && summary.curves) || [];
    const itDays = curves.filter((c) => c.source === "it" && c.estimator === "sign_corrected" && c.day !== null).map((c) => Number(c.day));
    if (!itDays.length) {
      IT.fill("headline-sensitivity", note("no population sensitivity yet (a night's analysis writes it)"));
      return;
    }
    const day = Math.max(...itDays);
    const today = curves.filter((c) => Number(c.day) === day);
    const it = today.find((c) => c.source === "it" && c.estimator === "sign_corrected");
    const eps = [...new Set(it.points.map((p) => p.epsilon).filter((e) => e !== null))].sort((a, b) => a - b);
    const sel = IT.$("headline-eps");
    const wanted = Number(IT.param("eps"));
    if (!sel.options.length) {
      sel.replaceChildren(...eps.map((e) => IT.option(String(e), String(e))));
      sel.value = String(eps.includes(wanted) ? wanted : eps[Math.floor((eps.length - 1) / 2)]);
      sel.addEventListener("change", () => {
        IT.setParams({ eps: sel.value });
        drawHeadlineSensitivity(summary, lineup);
      });
    }
    const e = Number(sel.value);
    const at = (c) => (c.points || []).find((p) => p.epsilon === e) || null;
    const itPoint = at(it);
    // One row per candidate: a day's figures come from that night's version of it.
    const byCand = new Map();
    for (const c of today) {
      if (c.estimator !== "model" || !c.source.startsWith("model:")) continue;
      const version = c.model_version || c.source.slice(6);
      const v = lineup.byVersion.get(version) || { version: version, candidate: version };
      const old = byCand.get(v.candidate);
      if (!old || (IT.nightOf(v) || 0) > (IT.nightOf(old.v) || 0)) byCand.set(v.candidate, { v: v, p: at(c) });
    }
    const rows = [{ who: "IT (sign-corrected, lower bound)", color: IT.FIXED.it, p: itPoint, it: true }];
    // The same estimator over every day so far (source it_to_date), when the analysis stored it.
    const toDate = today.find((c) => c.source === "it_to_date" && c.estimator === "sign_corrected");
    if (toDate && at(toDate)) rows.push({ who: "IT to date (every day pooled)", color: IT.FIXED.it, p: at(toDate), it: true });
    for (const cand of [...byCand.keys()].sort()) {
      const got = byCand.get(cand);
      rows.push({ who: "model " + cand, version: got.v.version, chosen: got.v.chosen, color: IT.candidateStyle(lineup.names, cand).color, p: got.p });
    }
    const rp = today.find((c) => c.source === "it" && c.estimator === "random_pair");
    const rpPoint = rp && rp.points && rp.points[0];
    const itValue = itPoint && typeof itPoint.value === "number" ? itPoint.value : null;
    const tableNode = IT.table(
      [
        ["source", (r) => IT.el("span", { class: "swatch-label" }, [IT.el("span", { class: "swatch", style: { background: r.color }, "aria-hidden": "true" }), r.who + (r.chosen ? " (chosen)" : "")])],
        ["sensitivity", (r) => (r.p ? r.p.value : null)],
        ["95% CI", (r) => (r.p ? ci(r.p) : "—")],
        ["model / IT", (r) => (r.it || !r.p || itValue === null || itValue === 0 || typeof r.p.value !== "number" ? "" : IT.fmt(r.p.value / itValue, 2) + "×")],
        ["version", (r) => r.version || ""],
      ],
      rows,
      { id: "headline-sensitivity-table" }
    );
    IT.fill("headline-sensitivity", [
      IT.el("p", { class: "lead" }, [
        "Day " + day + ", ε = " + e + ": IT moves by " + (itPoint ? IT.fmt(itPoint.value) + " " + ci(itPoint) : "—") +
          " site s.d." + (rpPoint && typeof rpPoint.value === "number" ? " (two unrelated clean images differ by " + IT.fmt(rpPoint.value) + ")" : "") + ".",
      ]),
      tableNode,
      IT.el("a", { href: IT.cfg.prefix + "/sensitivity?day=" + day + "&eps=" + e }, ["sensitivity curves of day " + day]),
    ]);
  }

  function drawHeadlineNight(nights, lineup) {
    if (!nights || !nights.length) {
      IT.fill("headline-night", note("no night has run yet"));
      return;
    }
    const last = newest(nights, "created_at");
    const chosen = lineup.versions.filter((v) => v.chosen && IT.nightOf(v) === Number(last.id));
    const parts = [
      IT.el("p", { class: "lead", id: "headline-night-text" }, [
        "Night " + last.id + " (session " + last.session_id + "): ", state(last.state),
        last.finished_at ? " — finished " + IT.fmtTime(last.finished_at) + "." : ".",
        last.batch_id ? " It published batch " + last.batch_id + "." : " It published no batch" + (last.state === "succeeded" ? "." : "; yesterday's batch stays in use."),
        chosen.length ? " Chosen model: " + chosen.map((v) => v.version).join(", ") + "." : "",
      ]),
    ];
    if (last.error) parts.push(IT.el("div", { class: "job-error" }, [last.error]));
    IT.fill("headline-night", parts);
  }

  /* What the server knows of the rig and the newest published batch: when the rig first pulled
   * it (GET /rigs/{rig_id}/batches/next), which session records it, when the rig completed it. */
  function drawHeadlineRig(batches, sessions) {
    const published = (batches || []).filter((b) => b.state === "published").sort((a, b) => String(b.published_at).localeCompare(String(a.published_at)));
    if (!batches) {
      IT.fill("headline-rig", note("batches could not be read"));
      return;
    }
    if (!published.length) {
      IT.fill("headline-rig", IT.el("p", { id: "headline-rig-text" }, ["No batch has been published yet, so the rig has nothing to pull."]));
      return;
    }
    const b = published[0];
    const todayUtc = new Date().toISOString().slice(0, 10);
    const fresh = String(b.published_at || "").slice(0, 10) === todayUtc;
    const shownIn = (sessions || []).filter((s) => s.batch_id === b.batch_id).map((s) => s.session_id);
    let status, cls;
    if (b.completed_at) {
      status = "The rig has shown batch " + b.batch_id + " (day " + b.day + ") and reported it complete at " + IT.fmtTime(b.completed_at) + ".";
      cls = "state-succeeded";
    } else if (shownIn.length) {
      status = "Batch " + b.batch_id + " (day " + b.day + ") is being recorded in session " + shownIn.join(", ") + "; the rig has not reported it complete yet.";
      cls = "state-running";
    } else if (b.pulled_at) {
      status = "The rig pulled batch " + b.batch_id + " (day " + b.day + ") at " + IT.fmtTime(b.pulled_at) + "; no session records it yet.";
      cls = "state-running";
    } else {
      status = "Batch " + b.batch_id + " (day " + b.day + ") waits for the rig: published " + IT.fmtTime(b.published_at) + ", not pulled yet.";
      cls = "state-queued";
    }
    IT.fill("headline-rig", [
      IT.el("p", { id: "headline-rig-text" }, [
        IT.el("span", { class: "state " + cls }, [b.completed_at ? "shown" : shownIn.length ? "recording" : b.pulled_at ? "pulled" : "waiting"]),
        " " + status + (fresh ? "" : " No batch was published today (UTC)."),
      ]),
      note("Pulled: the batch's rig first fetched it from /rigs/{rig_id}/batches/next (people looking do not count)."),
    ]);
  }

  async function drawHeadlineSites(lineup) {
    const chosen = lineup.versions.filter((v) => v.chosen).sort((a, b) => (IT.nightOf(a) || 0) - (IT.nightOf(b) || 0) || String(a.created_at).localeCompare(String(b.created_at)));
    if (!chosen.length) {
      IT.fill("headline-sites", note("no model has been chosen yet, so no site has been screened"));
      return;
    }
    const v = chosen[chosen.length - 1];
    const d = await IT.api("/model-versions/" + encodeURIComponent(v.version));
    const flagged = (d.site_metrics || []).filter((r) => r.gated || r.drift);
    const n = (d.site_metrics || []).length;
    if (!flagged.length) {
      IT.fill("headline-sites", IT.el("p", { id: "headline-sites-text" }, ["None of " + n + " sites is gated or drifting (screened by " + v.version + ")."]));
      return;
    }
    IT.fill("headline-sites", [
      IT.el("p", { id: "headline-sites-text" }, [flagged.length + " of " + n + " sites gated or drifting (screened by " + v.version + "):"]),
      IT.el(
        "ul",
        { class: "flagged", id: "headline-sites-list" },
        flagged.map((r) =>
          IT.el("li", {}, [
            IT.el("a", { href: IT.cfg.prefix + "/days?site=" + encodeURIComponent(r.site_id) }, [r.site_id]),
            ": " + [r.gated ? "gated" : "", r.drift ? "drifting" : ""].filter(Boolean).join(", ") + (r.gate_reason ? " (" + r.gate_reason + ")" : ""),
          ])
        )
      ),
    ]);
  }

  async function headline(batches, sessions) {
    const empty = { names: [], versions: [], byVersion: new Map() };
    const [lineup, summary, nights] = await Promise.all([
      IT.candidates().catch((e) => {
        IT.showError(e, "headline-card", "model versions");
        return empty;
      }),
      IT.api("/analysis/sensitivity/summary").catch((e) => {
        IT.showError(e, "headline-card", "sensitivity summary");
        return null;
      }),
      IT.api("/nights", { limit: 20, offset: 0 }).then(IT.items).catch((e) => {
        IT.showError(e, "headline-card", "nights");
        return null;
      }),
    ]);
    drawHeadlineSensitivity(summary, lineup);
    drawHeadlineNight(nights, lineup);
    drawHeadlineRig(batches, sessions);
    try {
      await drawHeadlineSites(lineup);
    } catch (e) {
      IT.fill("headline-sites", []);
      IT.showError(e, "headline-card", "gated and drifting sites");
    }
  }

  IT.page(async () => {
    const [batches, , sessions] = await Promise.all([loadBatches(), refreshNight(), loadSessions()]);
    await headline(batches, sessions);
    window.addEventListener("beforeunload", () => clearTimeout(timer));
  });
})();
