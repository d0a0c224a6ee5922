// Number formatting shared by the status view, the plots and the playground.

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** 1536 -> "1.5 KB", 1000 MB -> "1.0 GB" (four digits would crowd a plot's axis); null -> "—". */
export function bytes(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  let n = Number(value);
  let unit = 0;
  while (Math.abs(n) >= 1000 && unit < UNITS.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${n.toFixed(n >= 100 || unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

/** Seconds as "850 ms", "12.3 s", "4m 05s", "2h 03m". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const s = Math.floor(seconds);
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** A count or rate with a sensible number of digits: 0.42, 4.2, 42, 4,200, 4.2k past 10k. */
export function number(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const n = Number(value);
  if (Math.abs(n) >= 10000) return `${(n / 1000).toFixed(1)}k`;
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return String(Number(n.toFixed(Math.abs(n) < 1 ? 2 : digits)));
}

/** 0.423 -> "42%"; a ratio of nothing (null) -> "—". */
export function percent(ratio) {
  if (ratio === null || ratio === undefined || Number.isNaN(ratio)) return "—";
  return `${Math.round(ratio * 100)}%`;
}
