// The status view: cards, models, plots and requests in flight, from /health and the history.

import { $, badge, el, fill } from "./dom.js";
import { TimeChart } from "./chart.js";
import { bytes, duration, number, percent } from "./format.js";

const COLORS = { tokens: "#4f46e5", inFlight: "#0ea5e9", queued: "#f59e0b", finished: "#10b981", active: "#8b5cf6", cache: "#94a3b8", budget: "#ef4444" };
const SPAN_MIN_S = 60;

export class StatusView {
  constructor() {
    this.samples = [];
    this.windowS = 600;
    this.charts = {
      tokens: new TimeChart($("#chart-tokens"), { series: [{ key: "tokens_per_s", color: COLORS.tokens, style: "area" }], format: (v) => number(v) }),
      requests: new TimeChart($("#chart-requests"), {
        series: [
          { key: "finished_per_s", color: COLORS.finished, style: "bars" },
          { key: "in_flight", color: COLORS.inFlight },
          { key: "queued", color: COLORS.queued },
        ],
        format: (v) => number(v),
        steps: [1, 2, 4, 8, 10], // whole requests on every grid line
        minTop: 4,
      }),
      memory: new TimeChart($("#chart-memory"), {
        series: [
          { key: "active_bytes", color: COLORS.active, style: "area" },
          { key: "cache_bytes", color: COLORS.cache },
        ],
        format: bytes,
        base: 1024,
        steps: [1, 2, 4, 8, 10],
      }),
    };
    this.health = null;
  }

  /** Render what /health says: open to all, so shown with or without a key. */
  showHealth(health) {
    this.health = health;
    const models = health.models || [];
    const memory = health.memory || {};
    const queued = models.reduce((sum, m) => sum + (m.load?.queued || 0), 0);
    const requests = health.requests || {};
    setCard("inflight", number(requests.in_flight ?? 0), `${number(queued)} queued · ${number(requests.served ?? 0)} served`);
    const budget = memory.budget_bytes || 0;
    setCard("memory", bytes(memory.active_bytes), budget ? `of a ${bytes(budget)} budget` : `peak ${bytes(memory.peak_bytes)}`);
    const share = budget ? Math.min(1, (memory.active_bytes || 0) / budget) : 0;
    $("#memory-bar").style.width = `${(share * 100).toFixed(1)}%`;
    const device = health.device || {};
    setCard("uptime", duration(health.uptime_s), [device.backend, device.name].filter(Boolean).join(" · "));
    fill(
      $("#models tbody"),
      ...models.map((m) =>
        el(
          "tr",
          { dataset: { model: m.name } },
          el("td", {}, el("span", { class: "model-name" }, m.name), m.name === health.model ? el("span", { class: "tag" }, "default") : null, m.error ? el("div", { class: "cell-error" }, m.error) : null),
          el("td", {}, badge(m.state)),
          el("td", { class: "num" }, m.weight_bytes ? bytes(m.weight_bytes) : m.estimated_bytes ? `~${bytes(m.estimated_bytes)}` : "—"),
          el("td", { class: "num" }, m.context_length ? number(m.context_length) : "—"),
          el("td", {}, m.layout || m.quantization || "—"),
          el("td", { class: "num" }, m.load ? `${m.load.active} / ${m.load.queued}` : "—"),
          el("td", { class: "num" }, m.idle_seconds !== undefined ? duration(m.idle_seconds) : "—"),
        ),
      ),
    );
    if (!models.length) fill($("#models tbody"), el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No models")));
  }

  /** Add a history answer (its samples are those after the last one seen). */
  addHistory(answer) {
    this.windowS = answer.window_s;
    const fresh = answer.samples.map((s) => ({ ...s, finished_per_s: s.requests / answer.interval_s }));
    const cutoff = (fresh.length ? fresh[fresh.length - 1].t : 0) - this.windowS;
    this.samples = [...this.samples, ...fresh].filter((s) => s.t > cutoff);
    this.showInFlight(answer.in_flight);
    this.drawCharts();
    const last = this.samples[this.samples.length - 1];
    setCard("tokens", last ? number(last.tokens_per_s) : "—", `${number(answer.totals.output_tokens)} generated since start`);
    const input = this.samples.reduce((sum, s) => sum + s.input_tokens, 0);
    const cached = this.samples.reduce((sum, s) => sum + s.cached_tokens, 0);
    const totals = answer.totals;
    const lifetime = totals.input_tokens ? totals.cached_tokens / totals.input_tokens : null;
    setCard(
      "cache",
      input ? percent(cached / input) : percent(lifetime),
      input ? `${number(cached)} of ${number(input)} prompt tokens` : lifetime === null ? "no prompts yet" : "since start",
    );
  }

  lastSampleTime() {
    return this.samples.length ? this.samples[this.samples.length - 1].t : null;
  }

  drawCharts() {
    const first = this.samples.length ? this.samples[0].t : 0;
    const last = this.lastSampleTime() || 0;
    const span = Math.min(this.windowS, Math.max(SPAN_MIN_S, Math.ceil((last - first) / 60) * 60));
    const memory = this.health?.memory || {};
    const top = Math.max(0, ...this.samples.map((s) => s.active_bytes));
    // The budget line only where it does not flatten the plot (a small model under a large budget).
    const references = memory.budget_bytes && top > memory.budget_bytes / 4 ? [{ value: memory.budget_bytes, label: "budget", color: COLORS.budget }] : [];
    this.charts.tokens.update(this.samples, { span });
    this.charts.requests.update(this.samples, { span });
    this.charts.memory.update(this.samples, { span, references });
    const latest = this.samples[this.samples.length - 1];
    $("#chart-tokens-now").textContent = latest ? `${number(latest.tokens_per_s)} tok/s` : "";
    $("#chart-requests-now").textContent = latest ? `${latest.in_flight} in flight` : "";
    $("#chart-memory-now").textContent = latest ? bytes(latest.active_bytes) : "";
  }

  showInFlight(requests) {
    const rows = requests.map((r) =>
      el(
        "tr",
        {},
        el("td", { class: "mono" }, r.request_id),
        el("td", { class: "mono" }, `${r.method} ${r.path}`),
        el("td", {}, r.model || "—"),
        el("td", { class: "num" }, duration(r.running_s)),
        el("td", { class: "num" }, r.input_tokens !== undefined ? number(r.input_tokens) : "—"),
        el("td", { class: "num" }, r.output_tokens !== undefined ? number(r.output_tokens) : "—"),
        el("td", { class: "num" }, r.tokens_per_s !== null && r.tokens_per_s !== undefined ? number(r.tokens_per_s) : r.output_tokens ? "…" : "prefill"),
      ),
    );
    fill($("#inflight tbody"), ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No requests in flight"))]));
  }

  /** Forget the figures behind the key (signed out, or the key was refused). */
  lock() {
    this.samples = [];
    setCard("tokens", "—", "needs the API key");
    setCard("cache", "—", "needs the API key");
    fill($("#inflight tbody"));
  }
}

function setCard(name, value, note) {
  $(`#card-${name} .value`).textContent = value;
  $(`#card-${name} .note`).textContent = note || "";
}
