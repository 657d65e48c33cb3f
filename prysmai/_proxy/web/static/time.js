// Times as the dashboard shows them: 24-hour, year first, always with their zone -- UTC, or the
// browser's local time with its offset from UTC on that date ("UTC+05:45"), as prefs.js's switch
// says. Unix seconds in, text out; the datetime-local inputs of the filters go through here too.
import { zone } from "./prefs.js";

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** The calendar fields of a moment in the chosen zone, and the zone's name at that moment. */
export function fields(unix) {
  const d = new Date(Math.round(unix * 1000));
  if (zone() === "utc") {
    return { y: d.getUTCFullYear(), mo: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), mi: d.getUTCMinutes(),
      s: d.getUTCSeconds(), ms: d.getUTCMilliseconds(), zone: "UTC" };
  }
  return { y: d.getFullYear(), mo: d.getMonth() + 1, d: d.getDate(), h: d.getHours(), mi: d.getMinutes(),
    s: d.getSeconds(), ms: d.getMilliseconds(), zone: offsetName(-d.getTimezoneOffset()) };
}

/** "UTC", "UTC+01:00", "UTC-04:00": a local offset in minutes east of UTC, as text. */
function offsetName(minutes) {
  if (minutes === 0) return "UTC+00:00";
  const sign = minutes > 0 ? "+" : "-";
  const abs = Math.abs(minutes);
  return `UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

/** "2026-12-07 14:03:09 UTC"; with `ms`, "2026-12-07 14:03:09.123 UTC". */
export function fmtTime(unix, ms = false) {
  if (unix === null || unix === undefined) return "–";
  const f = fields(unix);
  const clock = `${pad(f.h)}:${pad(f.mi)}:${pad(f.s)}` + (ms ? "." + pad(f.ms, 3) : "");
  return `${f.y}-${pad(f.mo)}-${pad(f.d)} ${clock} ${f.zone}`;
}

/** "14:03:09 UTC": a time of today (the overview's "updated"). */
export function fmtClock(unix) {
  const f = fields(unix);
  return `${pad(f.h)}:${pad(f.mi)}:${pad(f.s)} ${f.zone}`;
}

/** A chart axis's label: the day ("12-07") over long spans, the time ("14:00") over short ones;
 * `withZone` adds the zone ("14:00 UTC"). */
export function fmtAxis(unix, span, withZone = false) {
  const f = fields(unix);
  const day = `${pad(f.mo)}-${pad(f.d)}`;
  const hm = `${pad(f.h)}:${pad(f.mi)}`;
  const label = span > 2 * 86400 ? day : span >= 43200 ? `${day} ${hm}` : hm;
  return withZone ? label + " " + f.zone : label;
}

/** The zone's name now, for labels ("UTC", "UTC+01:00"). */
export function zoneName() {
  return fields(Date.now() / 1000).zone;
}

/** Unix seconds as a datetime-local input's value, in the chosen zone. */
export function toInput(unix) {
  const f = fields(unix);
  return `${f.y}-${pad(f.mo)}-${pad(f.d)}T${pad(f.h)}:${pad(f.mi)}`;
}

/** A datetime-local input's value (read in the chosen zone) as unix seconds, or null. */
export function fromInput(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value || "");
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map((v) => Number(v || 0));
  const ms = zone() === "utc" ? Date.UTC(y, mo - 1, d, h, mi, s) : new Date(y, mo - 1, d, h, mi, s).getTime();
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000);
}
