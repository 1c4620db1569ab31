/* Day over day: how the sensitivity estimates and the models' predictivity move across days.
 *
 * API: GET /sites, GET /analysis/sensitivity/summary (which epsilons),
 * GET /analysis/sensitivity?epsilon= (and ?estimator=random_pair), population=true or site_id=,
 * GET /model-versions, GET /model-versions/{version},
 * GET /model-versions/sites/{site_id}/history (when a site is chosen).
 */
(function () {
  "use strict";
  const SHOWN = ["sign_corrected", "plain_noise_corrected", "plain", "model_free_sign_corrected", "random_pair", "model"];
  const LABEL = {
    sign_corrected: "IT sign-corrected",
    plain_noise_corrected: "IT noise-corrected (signed RMS)",
    plain: "IT plain",
    model_free_sign_corrected: "IT model-free baseline",
    random_pair: "IT random-pair baseline",
  };
  const COLOR = { sign_corrected: IT.FIXED.it, plain_noise_corrected: IT.FIXED.it, plain: IT.FIXED.it, model_free_sign_corrected: IT.FIXED.model_free, random_pair: IT.FIXED.baseline };
  const cache = new Map();
  let lineup = { names: [], versions: [], byVersion: new Map() };

  /* Model versions are named per night ("night3-resnet50"): a line joins one candidate's versions. */
  function candidateOf(source) {
    const version = source.startsWith("model:") ? source.slice(6) : source;
    const v = lineup.byVersion.get(version);
    return v ? v.candidate : version;
  }

  function name(source, estimator) {
    if (source === "it") return LABEL[estimator] || "IT " + estimator;
    if (source === "it_to_date") return (LABEL[estimator] || "IT " + estimator).replace(/^IT /, "IT to date ");
    return "model " + candidateOf(source) + (estimator === "model" ? "" : " " + estimator);
  }

  async function records(eps, site) {
    const key = eps + "|" + site;
    if (!cache.has(key)) {
      const params = site ? { site_id: site } : { population: true };
      cache.set(
        key,
        Promise.all([
          IT.fetchAll("/analysis/sensitivity", Object.assign({ epsilon: eps }, params), 50000, 1000),
          IT.fetchAll("/analysis/sensitivity", Object.assign({ estimator: "random_pair" }, params), 50000, 1000),
        ]).then(([a, b]) => a.concat(b))
      );
    }
    try {
      return await cache.get(key);
    } catch (e) {
      cache.delete(key);
      throw e;
    }
  }

  async function drawSensitivity() {
    IT.clearErrors("days-errors");
    const site = IT.$("site-select").value;
    const eps = IT.$("eps-select").value;
    const scale = IT.$("scale-select").value;
    IT.setParams({ site: site, eps: eps, scale: scale === "linear" ? "" : scale });
    let rows;
    try {
      rows = await records(eps, site);
    } catch (e) {
      IT.showError(e, "days-errors", "sensitivity by day");
      IT.plot("days-sens-plot", [], {});
      return;
    }
    rows = rows.filter((r) => (site ? r.site_id === site : r.site_id === null || r.site_id === undefined) && r.day !== null && r.day !== undefined);
    // One group per IT estimator and per model candidate (not per version: versions are per night).
    const groups = new Map();
    for (const r of rows) {
      if (!SHOWN.includes(r.estimator)) continue;
      const source = r.source || "it";
      // IT pooled to date: only its sign-corrected line (it tightens day by day).
      if (source === "it_to_date" && r.estimator !== "sign_corrected") continue;
      const group = source === "it" || source === "it_to_date" ? source : "cand:" + candidateOf(source);
      const key = group + "|" + r.estimator;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const keys = [...groups.keys()].sort((a, b) => {
      const [sa, ea] = a.split("|");
      const [sb, eb] = b.split("|");
      const rank = (x) => (x === "it" ? "0" : x === "it_to_date" ? "0~" : "1" + x);
      return rank(sa).localeCompare(rank(sb)) || SHOWN.indexOf(ea) - SHOWN.indexOf(eb);
    });
    const drawn = [];
    const traces = keys.map((key) => {
      const [group, estimator] = key.split("|");
      // A day with figures from several versions of one candidate keeps the newest night's.
      const byDay = new Map();
      for (const r of groups.get(key)) {
        const old = byDay.get(r.day);
        const night = (x) => IT.nightOf(lineup.byVersion.get((x.source || "").replace(/^model:/, "")) || { version: x.model_version || "" }) || 0;
        if (!old || night(r) > night(old)) byDay.set(r.day, r);
      }
      const pts = [...byDay.values()].sort((a, b) => Number(a.day) - Number(b.day));
      drawn.push(...pts);
      let color, symbol;
      if (group === "it_to_date") {
        color = IT.FIXED.it;
        symbol = "x";
      } else if (group === "it") {
        color = COLOR[estimator] || IT.FIXED.it;
        symbol = estimator.startsWith("model_free") ? "triangle-down" : estimator === "random_pair" ? "diamond-open" : "circle";
      } else {
        const st = IT.candidateStyle(lineup.names, group.slice(5));
        color = st.color;
        symbol = st.symbol;
      }
      const trace = {
        type: "scatter",
        mode: "lines+markers",
        name: group === "it" || group === "it_to_date" ? name(group, estimator) : "model " + group.slice(5),
        x: pts.map((r) => r.day),
        y: pts.map((r) => r.value),
        text: pts.map((r) => (r.source === "it" ? "IT" : r.source === "it_to_date" ? "IT, every day so far pooled" : r.source) + (r.undefined_reason ? " (undefined: " + r.undefined_reason + ")" : "")),
        hovertemplate: "%{fullData.name}<br>day %{x}: %{y:.3f}<br>%{text}<extra></extra>",
        error_y: {
          type: "data",
          symmetric: false,
          array: pts.map((r) => (r.ci_high !== null && r.value !== null ? r.ci_high - r.value : null)),
          arrayminus: pts.map((r) => (r.ci_low !== null && r.value !== null ? r.value - r.ci_low : null)),
        },
        line: { color: color, dash: group === "it_to_date" ? "dashdot" : { plain: "dash", random_pair: "longdash", plain_noise_corrected: "dot" }[estimator] || "solid" },
        marker: { color: color, symbol: symbol },
        meta: { group: group, estimator: estimator, versions: pts.map((r) => r.model_version || null) },
      };
      return IT.scaleTrace(trace, scale, pts.map((r) => r.ci_low), pts.map((r) => r.ci_high));
    });
    if (!traces.length) IT.showError(new Error("no sensitivity figures at ε=" + eps + " for " + (site || "the population")), "days-errors");
    IT.plot("days-sens-plot", traces, {
      title: { text: (site ? "site " + site : "population") + ", ε=" + eps, font: { size: 13 } },
      xaxis: { title: { text: "day" }, dtick: 1 },
      yaxis: IT.yAxis(scale, "normalised sensitivity", drawn.flatMap((r) => [r.value, r.ci_low, r.ci_high])),
    });
  }

  function median(xs) {
    const v = xs.filter((x) => typeof x === "number" && isFinite(x)).sort((a, b) => a - b);
    if (!v.length) return null;
    const k = Math.floor(v.length / 2);
    return v.length % 2 ? v[k] : (v[k - 1] + v[k]) / 2;
  }

  /* One line per candidate through its versions' nights; the chosen version of a night is starred. */
  function candidateLines(points, yOf, label) {
    const byCand = new Map();
    for (const p of points) {
      if (!byCand.has(p.candidate)) byCand.set(p.candidate, []);
      byCand.get(p.candidate).push(p);
    }
    const traces = [];
    for (const cand of [...byCand.keys()].sort()) {
      const pts = byCand.get(cand).sort((a, b) => a.night - b.night);
      const st = IT.candidateStyle(lineup.names, cand);
      traces.push({
        type: "scatter",
        mode: "lines+markers",
        name: cand + label,
        x: pts.map((p) => p.night),
        y: pts.map(yOf),
        text: pts.map((p) => p.version + (p.chosen ? " (chosen)" : "")),
        hovertemplate: "%{fullData.name}<br>night %{x}: %{y:.3f}<br>%{text}<extra></extra>",
        line: { color: st.color },
        marker: { color: st.color, symbol: pts.map((p) => (p.chosen ? "star" : st.symbol)), size: pts.map((p) => (p.chosen ? 14 : 8)) },
        meta: { candidate: cand, versions: pts.map((p) => p.version) },
      });
    }
    return traces;
  }

  async function drawPredictivity() {
    const site = IT.$("site-select").value;
    const versions = lineup.versions;
    let points;
    if (site) {
      let hist;
      try {
        hist = IT.items(await IT.api("/model-versions/sites/" + encodeURIComponent(site) + "/history"));
      } catch (e) {
        IT.showError(e, "days-errors", "model history of site " + site);
        hist = [];
      }
      // History rows name their version; its candidate and night come from the version's record.
      points = hist.map((h) => {
        const v = lineup.byVersion.get(h.version) || { version: h.version, candidate: h.version };
        return { candidate: v.candidate, night: IT.nightOf(v), version: h.version, chosen: h.chosen, ceiled: h.ceiled_predictivity, raw: h.predictivity };
      });
    } else {
      const recent = versions.slice(-60);
      const got = await IT.pool(recent, 6, (v) =>
        IT.api("/model-versions/" + encodeURIComponent(v.version)).catch((e) => {
          IT.showError(e, "days-errors", "model version " + v.version);
          return null;
        })
      );
      const rowsOf = (d) => (d && d.site_metrics) || [];
      points = recent.map((v, i) => ({
        candidate: v.candidate,
        night: IT.nightOf(v),
        version: v.version,
        chosen: v.chosen,
        ceiled: median(rowsOf(got[i]).map((r) => r.ceiled_predictivity)),
        raw: median(rowsOf(got[i]).map((r) => r.predictivity)),
      }));
    }
    points = points.filter((p) => p.night !== null);
    const traces = candidateLines(points, (p) => p.ceiled, "");
    IT.plot("days-pred-plot", traces, {
      xaxis: { title: { text: "night" }, dtick: 1 },
      yaxis: { title: { text: site ? "noise-ceiled predictivity (r)" : "median noise-ceiled predictivity (r)" }, range: [0, 1.05] },
      title: { text: (site ? "site " + site : "median over sites") + "; ★ = the night's chosen model", font: { size: 13 } },
    });
  }

  IT.page(async () => {
    const wantedSite = IT.param("site") || "";
    const [sites, got, summary] = await Promise.all([
      IT.fetchAll("/sites", {}, 5000),
      IT.candidates().catch((e) => {
        IT.showError(e, "days-errors", "model versions");
        return { names: [], versions: [], byVersion: new Map() };
      }),
      IT.api("/analysis/sensitivity/summary").catch((e) => {
        IT.showError(e, "days-errors", "sensitivity summary");
        return null;
      }),
    ]);
    lineup = got;
    lineup.versions = lineup.versions.slice().sort((a, b) => (IT.nightOf(a) || 0) - (IT.nightOf(b) || 0) || String(a.created_at).localeCompare(String(b.created_at)));
    const siteSel = IT.$("site-select");
    for (const s of sites) siteSel.appendChild(IT.option(s.site_id, s.site_id, s.site_id === wantedSite));
    // The summary's population curves tell which epsilons have figures.
    const curves = (summary && summary.curves) || [];
    const points = curves.flatMap((c) => c.points || []);
    let eps = [...new Set(points.map((p) => p.epsilon).filter((e) => e !== null && e !== undefined).map(Number))].sort((a, b) => a - b);
    if (!eps.length) eps = [1, 3, 10];
    const epsSel = IT.$("eps-select");
    const wantedEps = IT.param("eps");
    epsSel.replaceChildren(...eps.map((e) => IT.option(String(e), String(e), wantedEps !== null && Number(wantedEps) === e)));
    if (wantedEps === null || !eps.includes(Number(wantedEps))) epsSel.value = String(eps[Math.min(1, eps.length - 1)]);
    IT.$("scale-select").value = IT.scaleParam(IT.param("scale"));
    siteSel.addEventListener("change", () => Promise.all([drawSensitivity(), drawPredictivity()]));
    epsSel.addEventListener("change", drawSensitivity);
    IT.$("scale-select").addEventListener("change", drawSensitivity);
    await Promise.all([drawSensitivity(), drawPredictivity()]);
  });
})();
