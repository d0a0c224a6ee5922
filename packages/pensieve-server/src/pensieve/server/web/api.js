// Talking to the server that served this page: same origin only, the key in sessionStorage.

const KEY_ITEM = "pensieve.apiKey";

/** Thrown for an answer that is not a success; `status` 401 means the key was refused. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const key = {
  get: () => sessionStorage.getItem(KEY_ITEM),
  set: (value) => sessionStorage.setItem(KEY_ITEM, value),
  clear: () => sessionStorage.removeItem(KEY_ITEM),
};

function headers(extra = {}) {
  const value = key.get();
  return value ? { "x-api-key": value, ...extra } : { ...extra };
}

/** The error message of an answer in either API's error shape, or its status line. */
async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    message = body?.error?.message || message;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

/** GET /health. A 503 (a model still loading) carries the same body as a 200: both are status. */
export async function health() {
  const response = await fetch("/health", { cache: "no-store" });
  if (response.status !== 200 && response.status !== 503) throw await errorOf(response);
  return response.json();
}

/** GET /v1/pensieve/history, only the samples after `since` when given. */
export async function history(since) {
  const query = since ? `?since=${encodeURIComponent(since)}` : "";
  const response = await fetch(`/v1/pensieve/history${query}`, { headers: headers(), cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * POST /v1/messages with `stream: true`; calls `onEvent(name, data)` for each server-sent event
 * as it arrives. Resolves when the stream ends; rejects with ApiError for an error answer.
 */
export async function streamMessage(body, onEvent, signal) {
  const response = await fetch("/v1/messages", {
    method: "POST",
    headers: headers({ "content-type": "application/json", "anthropic-version": "2023-06-01" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const parsed = parseFrame(frame);
      if (parsed) onEvent(parsed.name, parsed.data);
    }
  }
}

/** One SSE frame -> {name, data}; comments and frames without data are skipped. */
function parseFrame(frame) {
  let name = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return null;
  return { name, data: JSON.parse(data.join("\n")) };
}
