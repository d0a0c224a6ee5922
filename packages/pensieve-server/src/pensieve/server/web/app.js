// The page's entry point: the key, the two views, and the polling loop.
//
// Without a key the page shows what /health shows (it is open to all); the plots, the requests
// in flight and the playground need the key, which is checked against the history endpoint and
// kept in this tab's sessionStorage only.

import { $ } from "./dom.js";
import { ApiError, health, history, key } from "./api.js";
import { Playground } from "./chat.js";
import { StatusView } from "./status.js";

const POLL_MS = 2000;

const status = new StatusView();
const playground = new Playground((error) => lock(refusedMessage(error)));
let unlocked = false;

function refusedMessage(error) {
  if (error.status === 401) {
    return key.get()
      ? "The server refused this key. Enter the key the server was started with: server.api_key in pensieve.toml, PENSIEVE_API_KEY or --api-key."
      : "This server needs its API key: enter the key it was started with (server.api_key in pensieve.toml, PENSIEVE_API_KEY or --api-key).";
  }
  return `Could not check the key: ${error.message}. Is the server still running? Reload the page to retry.`;
}

function lock(message) {
  unlocked = false;
  key.clear();
  status.lock();
  document.body.classList.add("locked");
  $("#key-panel").hidden = false;
  $("#key-error").hidden = !message;
  $("#key-error").textContent = message || "";
  $("#key-button").textContent = "Enter key";
  $("#key-input").focus();
}

function unlock() {
  unlocked = true;
  document.body.classList.remove("locked");
  $("#key-panel").hidden = true;
  $("#key-error").hidden = true;
  $("#key-button").textContent = key.get() ? "Forget key" : "No key needed";
  $("#key-button").disabled = !key.get();
}

/** Try the stored key (or none: a server may run without one); returns whether it was taken. */
async function tryKey() {
  try {
    status.addHistory(await history(null));
    unlock();
    return true;
  } catch (error) {
    const hadKey = Boolean(key.get());
    lock(error.status === 401 && !hadKey ? "" : refusedMessage(error));
    return false;
  }
}

$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("#key-input").value.trim();
  if (!value) {
    $("#key-error").hidden = false;
    $("#key-error").textContent = "Type the API key first.";
    return;
  }
  key.set(value);
  $("#key-input").value = "";
  await tryKey();
});

$("#key-button").addEventListener("click", () => lock(""));

function showView() {
  const view = location.hash === "#chat" ? "chat" : "status";
  $("#view-status").hidden = view !== "status";
  $("#view-chat").hidden = view !== "chat";
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.id === `tab-${view}`));
  if (view === "status") status.drawCharts();
}
window.addEventListener("hashchange", showView);

function showState(body) {
  const pill = $("#server-state");
  const state = body ? body.status : "unreachable";
  pill.textContent = body?.draining ? "draining" : state;
  pill.className = `pill pill-${body?.draining ? "loading" : state}`;
}

async function poll() {
  try {
    const body = await health();
    showState(body);
    status.showHealth(body);
    playground.setModels(body.models || [], body.model);
  } catch {
    showState(null);
  }
  if (unlocked) {
    try {
      status.addHistory(await history(status.lastSampleTime()));
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) lock(refusedMessage(error));
    }
  }
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

showView();
await tryKey();
loop();
