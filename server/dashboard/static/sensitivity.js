/* Sensitivity vs epsilon for IT and every model version, with the random-pair and model-free
 * baselines, plain vs sign-corrected, with bootstrap intervals as error bars.
 *
 * API: GET /sites, GET /analysis/sensitivity/summary (the days; else GET /sessions),
 * GET /analysis/sensitivity?day= (all records of a day: sites and population).
 */
(function () {
  "use strict";
  const PLAIN = new Set(["plain", "plain_noise_corrected", "noise_floor", "model_free_plain"]);
  const SIGNED = new Set(["sign_corrected", "model_free_sign_corrected"]);
  const LABEL = {
    plain: "plain",
    sign_corrected: "sign-corrected",
    plain_noise_corrected: "noise-corrected (signed RMS)",
    noise_floor: "noise floor",
    random_pair: "random-pair baseline",
    model_free_plain: "model-free baseline (plain)",
    model_free_sign_corrected: "model-free baseline (sign-corrected)",
    model: "",
  };
  const ORDER = ["sign_corrected", "plain", "plain_noise_corrected", "noise_floor", "model_free_sign_corrected", "model_free_plain", "random_pair", "model"];

  // IT figures pooled over every day so far (worker/stages/analyze_to_date.py): the estimators a
  // site is ranked by; the day's own baselines stay under "it".
  const TO_DATE = "it_to_date";
  const TO_DATE_SHOWN = new Set(["sign_corrected", "plain_noise_corrected"]);
  const state = { records: [], day: null, lineup: { names: [], byVersion: new Map() } };

  function keep(estimator, choice) {
    if (choice === "plain") return !SIGNED.has(estimator);
    if (choice === "sign_corrected") return !PLAIN.has(estimator);
    return true;
  }

  function traceName(source, estimator) {
    if (source === "it") return "IT " + (LABEL[estimator] !== undefined ? LABEL[estimator] : estimator);
    if (source === TO_DATE) return "IT to date " + (LABEL[estimator] !== undefined ? LABEL[estimator] : estimator);
    const name = source.startsWith("model:") ? "model " + source.slice(6) : source;
    return estimator === "model" ? name : name + " " + (LABEL[estimator] || estimator);
  }

  /* The candidate a source belongs to ("model:night3-resnet50" -> "resnet50"). */
  function candidateOf(source) {
    const version = source.startsWith("model:") ? source.slice(6) : source;
    const v = state.lineup.byVersion.get(version);
    return v ? v.candidate : version;
  }

  /* One colour per candidate (the same as on every other page); IT black, baselines grey/purple. */
  function style(source, estimator) {
    if (source === TO_DATE) {
      // IT's colour (it is IT data), told apart by a dash-dot line and crosses.
      return { line: { color: IT.FIXED.it, dash: "dashdot", width: 1.5 }, marker: { color: IT.FIXED.it, symbol: "x", size: 8 } };
    }
    if (source !== "it") {
      const c = IT.candidateStyle(state.lineup.names, candidateOf(source));
      return { line: { color: c.color, width: 2 }, marker: { color: c.color, symbol: c.symbol } };
    }
    const dash = estimator === "plain_noise_corrected" ? "dot" : PLAIN.has(estimator) ? "dash" : "solid";
    if (estimator === "noise_floor") return { line: { color: IT.FIXED.baseline, dash: "dot" }, marker: { color: IT.FIXED.baseline, symbol: "circle-open" } };
    if (estimator === "random_pair") return { line: { color: IT.FIXED.baseline, dash: "longdash", width: 1.5 }, marker: { color: IT.FIXED.baseline, symbol: "diamond-open" } };
    if (estimator.startsWith("model_free")) return { line: { color: IT.FIXED.model_free, dash: dash }, marker: { color: IT.FIXED.model_free, symbol: "triangle-down" } };
    const symbol = { plain: "square-open", plain_noise_corrected: "circle-open" }[estimator] || "circle";
    return { line: { color: IT.FIXED.it, dash: dash, width: 2.5 }, marker: { color: IT.FIXED.it, size: 8, symbol: symbol } };
  }

  function errorBars(rows) {
    return {
      type: "data",
      symmetric: false,
      array: rows.map((r) => (r.ci_high !== null && r.ci_high !== undefined && r.value !== null ? r.ci_high - r.value : null)),
      arrayminus: rows.map((r) => (r.ci_low !== null && r.ci_low !== undefined && r.value !== null ? r.value - r.ci_low : null)),
      thickness: 1.2,
      width: 4,
    };
  }

  function sortKey(k) {
    const [source, estimator] = k.split("|");
    const rank = source === "it" ? "0" : source === TO_DATE ? "0~" : "1" + source;
    return rank + String(ORDER.indexOf(estimator)).padStart(2, "0");
  }

  /* Group records by (source, estimator) into one trace each. */
  function curves(records, choice) {
    const eps = records.map((r) => r.epsilon).filter((e) => e !== null && e !== undefined);
    const lo = eps.length ? Math.min(...eps) : 1;
    const hi = eps.length ? Math.max(...eps) : 10;
    const groups = new Map();
    for (const r of records) {
      if (!keep(r.estimator, choice)) continue;
      if (r.source === TO_DATE && !TO_DATE_SHOWN.has(r.estimator)) continue;
      const key = (r.source || "it") + "|" + r.estimator;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const traces = [];
    for (const key of [...groups.keys()].sort((a, b) => sortKey(a).localeCompare(sortKey(b)))) {
      const [source, estimator] = key.split("|");
      let rows = groups.get(key).slice().sort((a, b) => (a.epsilon || 0) - (b.epsilon || 0));
      let x = rows.map((r) => r.epsilon);
      if (rows.every((r) => r.epsilon === null || r.epsilon === undefined)) {
        // Epsilon-free figure (random-pair baseline): a level across the epsilon range.
        rows = [rows[0], rows[0]];
        x = [lo, hi];
      }
      traces.push(
        Object.assign(
          {
            type: "scatter",
            mode: "lines+markers",
            name: traceName(source, estimator),
            x: x,
            y: rows.map((r) => (r.value === null || r.value === undefined ? null : r.value)),
            error_y: errorBars(rows),
            text: rows.map((r) => (r.undefined_reason ? "undefined: " + r.undefined_reason : "n pairs " + IT.fmt(r.n_pairs) + ", n sites " + IT.fmt(r.n_sites))),
            hovertemplate: "%{fullData.name}<br>ε=%{x}: %{y:.3f}<br>%{text}<extra></extra>",
            meta: { source: source, estimator: estimator },
            _rows: rows,
          },
          style(source, estimator)
        )
      );
    }
    return traces;
  }

  function siteMatches(r, site) {
    return site ? r.site_id === site : r.site_id === null || r.site_id === undefined;
  }

  /* Raw values and their interval ends, for the symlog transform and its ticks. */
  function scaled(traces, rowsOf, scale) {
    for (const t of traces) {
      const rows = rowsOf(t);
      IT.scaleTrace(t, scale, rows.map((r) => (r ? r.ci_low : null)), rows.map((r) => (r ? r.ci_high : null)));
    }
    return traces;
  }

  function rawValues(rows) {
    return rows.flatMap((r) => [r.value, r.ci_low, r.ci_high]);
  }

  function draw() {
    const site = IT.$("site-select").value;
    const choice = IT.$("estimator-select").value;
    const scale = IT.$("scale-select").value;
    IT.setParams({ site: site, day: state.day, est: choice === "both" ? "" : choice, scale: scale === "linear" ? "" : scale });
    const rows = state.records.filter((r) => siteMatches(r, site));
    const traces = curves(rows, choice);
    const who = site ? "site " + site : "population";
    if (!traces.length) {
      IT.showError(new Error("no sensitivity figures for " + who + " on day " + state.day), "sens-errors");
    }
    scaled(traces, (t) => t._rows, scale);
    for (const t of traces) delete t._rows;
    IT.plot("sens-plot", traces, {
      title: { text: "Sensitivity of " + who + ", day " + state.day, font: { size: 14 } },
      xaxis: { title: { text: "ε (L2, pixel units)" }, type: "log" },
      yaxis: IT.yAxis(scale, "normalised sensitivity", rawValues(rows)),
    });
    drawSites(choice);
    drawTable(rows);
  }

  function drawSites(choice) {
    const eps = Number(IT.$("eps-select").value);
    const rows = state.records.filter((r) => r.site_id && (r.epsilon === eps || r.estimator === "random_pair"));
    const sites = [...new Set(rows.map((r) => r.site_id))].sort();
    const keys = new Map();
    for (const r of rows) {
      if (!keep(r.estimator, choice) || r.estimator === "noise_floor" || r.estimator.startsWith("model_free")) continue;
      if (r.source === TO_DATE && !TO_DATE_SHOWN.has(r.estimator)) continue;
      const key = (r.source || "it") + "|" + r.estimator;
      if (!keys.has(key)) keys.set(key, new Map());
      keys.get(key).set(r.site_id, r);
    }
    const scale = IT.$("scale-select").value;
    const drawn = [];
    const traces = [...keys.keys()].sort((a, b) => sortKey(a).localeCompare(sortKey(b))).map((key) => {
      const [source, estimator] = key.split("|");
      const bySite = keys.get(key);
      const cells = sites.map((s) => bySite.get(s) || { value: null });
      drawn.push(...cells);
      const st = style(source, estimator);
      const trace = {
        type: "bar",
        name: traceName(source, estimator),
        x: sites,
        y: cells.map((r) => r.value),
        error_y: errorBars(cells),
        marker: {
          color: st.line.color,
          pattern: { shape: PLAIN.has(estimator) ? "/" : estimator === "random_pair" ? "." : "" },
        },
        meta: { source: source, estimator: estimator },
      };
      return IT.scaleTrace(trace, scale, cells.map((r) => r.ci_low), cells.map((r) => r.ci_high));
    });
    IT.plot("sites-plot", traces, {
      barmode: "group",
      yaxis: IT.yAxis(scale, "normalised sensitivity", rawValues(drawn)),
      xaxis: { title: { text: "site" } },
    });
  }

  function drawTable(rows) {
    const sorted = rows.slice().sort((a, b) => sortKey((a.source || "it") + "|" + a.estimator).localeCompare(sortKey((b.source || "it") + "|" + b.estimator)) || (a.epsilon || 0) - (b.epsilon || 0));
    IT.fill(
      "sens-table",
      IT.table(
        [
          ["source", "source"],
          ["estimator", "estimator"],
          ["ε", "epsilon"],
          ["value", "value"],
          ["95% CI", (r) => (r.ci_low === null || r.ci_low === undefined ? "—" : "[" + IT.fmt(r.ci_low) + ", " + IT.fmt(r.ci_high) + "]")],
          ["pairs", "n_pairs"],
          ["sites", "n_sites"],
          ["undefined because", "undefined_reason"],
        ],
        sorted,
        { id: "sens-records" }
      )
    );
  }

  async function loadDay(day) {
    IT.clearErrors("sens-errors");
    state.day = day;
    IT.setBusy("sens-plot", true);
    try {
      state.records = await IT.fetchAll("/analysis/sensitivity", { day: day }, 20000);
    } catch (e) {
      state.records = [];
      IT.showError(e, "sens-errors", "sensitivity of day " + day);
    } finally {
      IT.setBusy("sens-plot", false);
    }
    const eps = [...new Set(state.records.map((r) => r.epsilon).filter((e) => e !== null && e !== undefined))].sort((a, b) => a - b);
    const wanted = Number(IT.param("eps"));
    const epsSel = IT.$("eps-select");
    epsSel.replaceChildren(...eps.map((e) => IT.option(String(e), String(e), e === wanted)));
    if (!eps.includes(wanted) && eps.length) epsSel.value = String(eps[Math.min(1, eps.length - 1)]);
    draw();
  }

  async function days() {
    const found = new Set();
    try {
      // Population curves per source, estimator and day: their days are the days with figures.
      const summary = await IT.api("/analysis/sensitivity/summary");
      for (const c of (summary && summary.curves) || []) {
        if (c.day !== null && c.day !== undefined) found.add(Number(c.day));
      }
    } catch (e) {
      if (!(e instanceof IT.ApiError) || e.status !== 404) IT.showError(e, "sens-errors", "sensitivity summary");
    }
    if (!found.size) {
      for (const s of await IT.fetchAll("/sessions", {}, 5000)) if (s.day !== null && s.day !== undefined) found.add(Number(s.day));
    }
    return [...found].sort((a, b) => a - b);
  }

  IT.page(async () => {
    const siteSel = IT.$("site-select");
    const wantedSite = IT.param("site") || "";
    const [sites, dayList, lineup] = await Promise.all([
      IT.fetchAll("/sites", {}, 5000),
      days(),
      IT.candidates().catch((e) => {
        IT.showError(e, "sens-errors", "model versions (for their candidates' colours)");
        return { names: [], byVersion: new Map() };
      }),
    ]);
    state.lineup = lineup;
    for (const s of sites) siteSel.appendChild(IT.option(s.site_id, s.site_id, s.site_id === wantedSite));
    if (wantedSite && !sites.some((s) => s.site_id === wantedSite)) {
      // Ask the API about the unknown site so its own message shows (e.g. 404 "no site ...").
      try {
        await IT.api("/sites/" + encodeURIComponent(wantedSite));
      } catch (e) {
        IT.showError(e, "messages", "site " + wantedSite);
      }
    }
    const daySel = IT.$("day-select");
    const wantedDay = IT.param("day");
    daySel.replaceChildren(...dayList.map((d) => IT.option(String(d), "day " + d, String(d) === wantedDay)));
    if (!dayList.length) {
      IT.showError(new Error("no recording day has sensitivity figures yet"), "sens-errors");
      return;
    }
    if (!wantedDay || !dayList.map(String).includes(wantedDay)) daySel.value = String(dayList[dayList.length - 1]);
    const est = IT.param("est");
    if (est) IT.$("estimator-select").value = est;
    IT.$("scale-select").value = IT.scaleParam(IT.param("scale"));
    siteSel.addEventListener("change", () => { IT.clearErrors("sens-errors"); draw(); });
    IT.$("estimator-select").addEventListener("change", draw);
    IT.$("scale-select").addEventListener("change", draw);
    IT.$("eps-select").addEventListener("change", () => { IT.setParams({ eps: IT.$("eps-select").value }); drawSites(IT.$("estimator-select").value); });
    daySel.addEventListener("change", () => loadDay(daySel.value));
    await loadDay(daySel.value);
  });
})();
