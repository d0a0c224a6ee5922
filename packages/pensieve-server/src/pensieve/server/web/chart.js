// A small time-series plot on a <canvas>: lines, filled areas, bars and reference lines.
// Hand-written because a charting library would be ten times the size of what the page needs
// and would have to be vendored; this draws the three plots of the status view and no more.

const PAD = { left: 56, right: 12, top: 10, bottom: 22 };

/** A round top for the y axis, whose quarters are the grid lines: the smallest step x 10^k
 * that is >= value, in the unit the value is shown in when `base` is 1024 (so ticks read 100 MB). */
function niceCeil(value, base, steps) {
  if (value <= 0) return 1;
  if (base) {
    const unit = base ** Math.floor(Math.log(value) / Math.log(base));
    return roundUp(value / unit, steps) * unit;
  }
  return roundUp(value, steps);
}

function roundUp(value, steps) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of steps) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/** Seconds between x-axis labels: at most six, in seconds up to a minute and a half, else in
 * whole minutes (so the labels never mix -90s and -2m). */
function tickStep(span) {
  for (const step of span <= 90 ? [10, 15, 30] : [60, 120, 300]) {
    if (span / step <= 6) return step;
  }
  return 600;
}

function tickLabel(secondsAgo, span) {
  if (secondsAgo === 0) return "now";
  return span <= 90 ? `-${secondsAgo}s` : `-${secondsAgo / 60}m`;
}

export class TimeChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{series: {key: string, color: string, style?: "line"|"area"|"bars"}[], format: (v: number) => string, base?: number, steps?: number[], minTop?: number}} options
   */
  constructor(canvas, options) {
    this.canvas = canvas;
    this.series = options.series;
    this.format = options.format;
    this.base = options.base;
    this.steps = options.steps || [1, 2, 2.5, 5, 10];
    this.minTop = options.minTop || 0;
    this.samples = [];
    this.references = [];
    this.span = 60;
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** New data: samples ({t, ...keys}) oldest first, horizontal reference lines, seconds shown. */
  update(samples, { references = [], span = 60 } = {}) {
    this.samples = samples;
    this.references = references;
    this.span = span;
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const muted = style.getPropertyValue("--chart-text").trim() || "#6b7280";
    const grid = style.getPropertyValue("--chart-grid").trim() || "#e5e7eb";
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";

    const plot = { x: PAD.left, y: PAD.top, w: width - PAD.left - PAD.right, h: height - PAD.top - PAD.bottom };
    const end = this.samples.length ? this.samples[this.samples.length - 1].t : Date.now() / 1000;
    const start = end - this.span;
    const visible = this.samples.filter((s) => s.t >= start);
    let top = 0;
    for (const s of visible) for (const series of this.series) top = Math.max(top, s[series.key] || 0);
    for (const ref of this.references) top = Math.max(top, ref.value);
    top = Math.max(this.minTop, niceCeil(top * 1.08, this.base, this.steps));
    const xOf = (t) => plot.x + ((t - start) / this.span) * plot.w;
    const yOf = (v) => plot.y + plot.h - (v / top) * plot.h;

    // Grid and y labels.
    ctx.strokeStyle = grid;
    ctx.fillStyle = muted;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const value = (top * i) / 4;
      const y = Math.round(yOf(value)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(plot.x, y);
      ctx.lineTo(plot.x + plot.w, y);
      ctx.stroke();
      ctx.fillText(this.format(value), plot.x - 8, y);
    }
    // X labels, seconds before the newest sample.
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const step = tickStep(this.span);
    for (let ago = 0; ago <= this.span; ago += step) {
      const x = xOf(end - ago);
      if (x - plot.x < 14 && ago !== 0) continue;
      ctx.fillText(tickLabel(ago, this.span), Math.min(x, plot.x + plot.w - 12), plot.y + plot.h + 6);
    }

    let drawn = 0;
    const barWidth = Math.max(1.5, (plot.w / this.span) * 0.7);
    for (const series of this.series) {
      const points = visible.map((s) => [xOf(s.t), yOf(s[series.key] || 0)]);
      if (!points.length) continue;
      drawn += points.length;
      ctx.strokeStyle = series.color;
      ctx.fillStyle = series.color;
      if (series.style === "bars") {
        ctx.globalAlpha = 0.55;
        for (const [i, [x, y]] of points.entries()) {
          if (visible[i][series.key] > 0) ctx.fillRect(x - barWidth / 2, y, barWidth, plot.y + plot.h - y);
        }
        ctx.globalAlpha = 1;
        continue;
      }
      if (series.style === "area") {
        ctx.globalAlpha = 0.14;
        ctx.beginPath();
        ctx.moveTo(points[0][0], plot.y + plot.h);
        for (const [x, y] of points) ctx.lineTo(x, y);
        ctx.lineTo(points[points.length - 1][0], plot.y + plot.h);
        ctx.closePath();
        ctx.fill();
        ctx.globalAlpha = 1;
      }
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      for (const [i, [x, y]] of points.entries()) (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y));
      ctx.stroke();
    }
    for (const ref of this.references) {
      const y = Math.round(yOf(ref.value)) + 0.5;
      ctx.strokeStyle = ref.color;
      ctx.setLineDash([5, 4]);
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(plot.x, y);
      ctx.lineTo(plot.x + plot.w, y);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = ref.color;
      ctx.textAlign = "left";
      ctx.textBaseline = "bottom";
      ctx.fillText(ref.label, plot.x + 6, y - 3);
    }
    if (!drawn) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for samples…", plot.x + plot.w / 2, plot.y + plot.h / 2);
    }
    canvas.dataset.points = String(drawn);
  }
}
