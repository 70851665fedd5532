/* edgeloop console: live updates (server-sent events) and charts (uPlot).
 *
 * No inline script anywhere (the Content-Security-Policy allows only this file and the
 * vendored libraries). Text from devices is only ever set with textContent.
 */
(function () {
  "use strict";

  var body = document.body;
  var COLORS = ["#1f6feb", "#8250df", "#1a7f37", "#bf3989", "#9a6700", "#0a7ea4", "#cf222e", "#57606a"];
  var TOPICS = ["incidents", "anomalies", "fleet", "rollouts", "deliveries", "telemetry", "device"];

  // -- live updates ------------------------------------------------------------------------
  // One EventSource per page. Each message names a topic whose data changed; the page's htmx
  // regions listen for "live-<topic>" on <body> and fetch their fragment again.
  function connectLive() {
    var url = body.getAttribute("data-live");
    var status = document.getElementById("live-status");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    function show(on, text) {
      if (!status) { return; }
      status.className = on ? "live on" : "live off";
      status.textContent = text;
    }
    source.addEventListener("open", function () { show(true, "live"); });
    source.addEventListener("error", function () { show(false, "reconnecting"); });
    TOPICS.forEach(function (topic) {
      source.addEventListener(topic, function () {
        body.dispatchEvent(new CustomEvent("live-" + topic));
      });
    });
  }

  // -- charts ------------------------------------------------------------------------------
  function note(el, text) {
    var p = document.createElement("p");
    p.className = "muted";
    p.textContent = text;
    el.appendChild(p);
  }

  function title(el, text, sub) {
    var h = document.createElement("div");
    h.className = "ch-title";
    h.textContent = text;
    if (sub) {
      var s = document.createElement("span");
      s.textContent = sub;
      h.appendChild(s);
    }
    el.appendChild(h);
  }

  // Shades the anomaly windows (and, for a channel, the model's normal band) under the series.
  function shading(events, band) {
    return {
      hooks: {
        drawClear: [function (u) {
          var ctx = u.ctx, b = u.bbox;
          ctx.save();
          if (band) {
            var y0 = u.valToPos(band[1], "y", true), y1 = u.valToPos(band[0], "y", true);
            ctx.fillStyle = "rgba(26, 127, 55, 0.09)";
            ctx.fillRect(b.left, Math.max(b.top, y0), b.width,
                         Math.min(b.top + b.height, y1) - Math.max(b.top, y0));
          }
          events.forEach(function (e) {
            var x0 = Math.max(b.left, u.valToPos(e.start, "x", true));
            var x1 = Math.min(b.left + b.width, u.valToPos(e.end, "x", true));
            if (x1 <= x0) { x1 = x0 + 2; }
            ctx.fillStyle = e.mine ? "rgba(207, 34, 46, 0.22)" : "rgba(207, 34, 46, 0.10)";
            ctx.fillRect(x0, b.top, x1 - x0, b.height);
          });
          ctx.restore();
        }]
      }
    };
  }

  function thresholdLine(threshold) {
    return {
      hooks: {
        draw: [function (u) {
          if (threshold === null || threshold === undefined) { return; }
          var ctx = u.ctx, b = u.bbox, y = u.valToPos(threshold, "y", true);
          ctx.save();
          ctx.strokeStyle = "#cf222e";
          ctx.setLineDash([6, 4]);
          ctx.lineWidth = 1.5;
          ctx.beginPath();
          ctx.moveTo(b.left, y);
          ctx.lineTo(b.left + b.width, y);
          ctx.stroke();
          ctx.restore();
        }]
      }
    };
  }

  function renderChart(el, data) {
    (el._plots || []).forEach(function (p) { p.destroy(); });
    el._plots = [];
    el.textContent = "";
    var width = Math.max(320, el.clientWidth - 8);
    // From the first reading (a device may have less history than the window) to the end.
    var first = data.ts.length ? Math.min(data.ts[0], data.events.length ? data.events[0].start : Infinity) : data.since;
    var range = function () { return [Math.max(data.since, first), data.until]; };
    var syncKey = el.id || "chart";
    var plots = el._plots;
    if (!data.ts.length) {
      note(el, "No readings stored between these times.");
    }
    data.channels.forEach(function (channel, i) {
      if (!data.ts.length) { return; }
      var band = data.bands[channel] || null;
      var wrap = document.createElement("div");
      el.appendChild(wrap);
      title(wrap, channel, band ? "normal " + band[0].toPrecision(4) + " … " + band[1].toPrecision(4) : "");
      var opts = {
        width: width, height: 90,
        cursor: { sync: { key: syncKey }, drag: { x: false, y: false } },
        legend: { show: false },
        scales: {
          x: { time: true, range: range },
          y: { range: function (u, min, max) {
            if (band) { min = Math.min(min, band[0]); max = Math.max(max, band[1]); }
            var pad = (max - min) * 0.08 || 1;
            return [min - pad, max + pad];
          } }
        },
        axes: [{ size: 26 }, { size: 56 }],
        series: [{}, { label: channel, stroke: COLORS[i % COLORS.length], width: 1.25,
                       points: { show: false } }],
        plugins: [shading(data.events, band)]
      };
      plots.push(new uPlot(opts, [data.ts, data.values[i]], wrap));
    });
    var wrap = document.createElement("div");
    el.appendChild(wrap);
    var events = data.events.slice().sort(function (a, b) { return a.end - b.end; });
    title(wrap, "anomaly score", data.threshold !== null
      ? "threshold " + Number(data.threshold).toPrecision(4) + " · " + events.length + " event(s)"
      : "no anomaly in this range");
    var top = data.threshold || 1;
    events.forEach(function (e) { top = Math.max(top, e.score); });
    plots.push(new uPlot({
      width: width, height: 110,
      cursor: { sync: { key: syncKey }, drag: { x: false, y: false } },
      legend: { show: false },
      scales: { x: { time: true, range: range }, y: { range: [0, top * 1.15] } },
      axes: [{ size: 26 }, { size: 56 }],
      series: [{}, { label: "score", stroke: "#cf222e", width: 0, paths: function () { return null; },
                     points: { show: true, size: 6, fill: "#cf222e", stroke: "#cf222e" } }],
      plugins: [shading(data.events, null), thresholdLine(data.threshold)]
    }, [events.map(function (e) { return e.end; }), events.map(function (e) { return e.score; })], wrap));
  }

  function loadChart(el) {
    var url = el.getAttribute("data-chart");
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) { renderChart(el, data); el.setAttribute("data-loaded", "1"); })
      .catch(function (err) { el.textContent = ""; note(el, "Chart unavailable: " + err.message); });
  }

  function initCharts(root) {
    if (!window.uPlot) { return; }
    (root || document).querySelectorAll("[data-chart]").forEach(function (el) {
      if (el._chartInit) { return; }
      el._chartInit = true;
      loadChart(el);
      var topic = el.getAttribute("data-live-topic");
      if (topic) {
        var waiting = false, again = false;
        body.addEventListener("live-" + topic, function refresh() {
          if (waiting) { again = true; return; }
          waiting = true;
          loadChart(el).then(function () {
            setTimeout(function () {
              waiting = false;
              if (again) { again = false; refresh(); }
            }, 1500);
          });
        });
      }
    });
  }

  // -- confirmations (no inline onclick) ------------------------------------------------------
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var text = form.getAttribute && form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) { ev.preventDefault(); ev.stopPropagation(); }
  }, true);

  document.addEventListener("htmx:afterSettle", function (ev) { initCharts(ev.target); });
  document.addEventListener("DOMContentLoaded", function () {
    connectLive();
    initCharts(document);
  });
})();
