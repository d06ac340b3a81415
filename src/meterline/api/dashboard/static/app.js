// meterline dashboard: draws the charts (uPlot) and wires htmx (CSRF header, refresh).
// No inline script anywhere: the Content-Security-Policy allows scripts from this server only.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (evt) {
    evt.detail.headers["X-CSRF-Token"] = csrfToken();
  });

  var PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function fmt(v) {
    if (v == null) return "–";
    return v.toLocaleString(undefined, { maximumFractionDigits: 6 });
  }

  function tooltipPlugin(data) {
    var tip;
    return {
      hooks: {
        init: function (u) {
          tip = document.createElement("div");
          tip.className = "chart-tip";
          tip.hidden = true;
          u.over.appendChild(tip);
          u.over.addEventListener("mouseleave", function () { tip.hidden = true; });
        },
        setCursor: function (u) {
          var i = u.cursor.idx;
          if (i == null) { tip.hidden = true; return; }
          var when = uPlot.tzDate(new Date(u.data[0][i] * 1000), data.tz);
          var lines = [when.toLocaleString() + " (" + data.tz + ")"];
          for (var s = 1; s < u.series.length; s++) {
            lines.push(u.series[s].label + ": " + fmt(u.data[s][i]) + " " + data.unit);
          }
          tip.textContent = lines.join("\n");
          tip.hidden = false;
          var left = Math.min(u.cursor.left + 12, u.over.clientWidth - tip.offsetWidth);
          tip.style.left = Math.max(0, left) + "px";
          tip.style.top = Math.max(0, u.cursor.top - tip.offsetHeight - 8) + "px";
        },
      },
    };
  }

  var DAY_INCRS = [1, 2, 3, 7, 14, 30, 60, 90, 180, 365, 730, 1825].map(function (d) { return d * 86400; });

  function halfStep(xs) {
    var step = 0;
    for (var i = 1; i < xs.length; i++) {
      var gap = xs[i] - xs[i - 1];
      if (gap > 0 && (!step || gap < step)) step = gap;
    }
    return (step || 86400) / 2;
  }

  function draw(fig) {
    if (fig.dataset.drawn) return;
    var source = document.getElementById(fig.dataset.chart + "-data");
    if (!source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.x.length) return;
    fig.dataset.drawn = "1";
    var box = fig.querySelector(".chart-box");
    var series = [{ label: "time (" + data.tz + ")" }];
    var columns = [data.x];
    data.series.forEach(function (s, i) {
      var color = PALETTE[i % PALETTE.length];
      var spec = { label: s.label, stroke: color, width: 2, value: function (u, v) { return fmt(v); } };
      if (data.kind === "bars") {
        spec.fill = color + "55";
        spec.paths = uPlot.paths.bars({ size: [0.6, 60] });
        spec.points = { show: false };
      }
      series.push(spec);
      columns.push(s.values);
    });
    var opts = {
      width: Math.max(240, box.clientWidth),
      height: 240,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), data.tz); },
      series: series,
      axes: [
        { label: "time (" + data.tz + ")", stroke: "#374151" },
        { label: data.unit, stroke: "#374151", size: 70, values: function (u, vals) { return vals.map(fmt); } },
      ],
      legend: { live: true },
      plugins: [tooltipPlugin(data)],
    };
    if (data.kind === "bars") {
      // a bar is centred on its period's start: half a period of room on each side, so the
      // first and the last bar (today's, often) are drawn whole, not cut in half at the edges
      var half = halfStep(data.x);
      opts.scales = { x: { time: true, range: function (u, min, max) { return [min - half, max + half]; } } };
      // ticks at whole days or longer (calendar months past 30 days), not at the half days
      // the padding would otherwise offer
      opts.axes[0].incrs = DAY_INCRS;
    }
    var plot = new uPlot(opts, columns, box);
    fig._plot = plot;
  }

  function drawAll(root) {
    (root || document).querySelectorAll("figure[data-chart]").forEach(draw);
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      document.querySelectorAll("figure[data-chart]").forEach(function (fig) {
        var box = fig.querySelector(".chart-box");
        if (fig._plot && box) fig._plot.setSize({ width: Math.max(240, box.clientWidth), height: 240 });
      });
    }, 150);
  });

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSettle", function (evt) { drawAll(evt.target); });
})();
