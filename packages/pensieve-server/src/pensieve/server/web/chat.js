// The chat playground: one conversation streamed through /v1/messages, with per-answer figures.

import { $, el, fill } from "./dom.js";
import { ApiError, streamMessage } from "./api.js";
import { duration, number } from "./format.js";

export class Playground {
  /** @param {(error: ApiError) => void} onAuthError called when the server refuses the key */
  constructor(onAuthError) {
    this.onAuthError = onAuthError;
    this.messages = [];
    this.controller = null;
    $("#chat-temperature").addEventListener("input", () => this.showTemperature());
    $("#composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("#prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    $("#stop").addEventListener("click", () => this.controller?.abort());
    $("#chat-clear").addEventListener("click", () => this.clear());
    this.showTemperature();
    this.clear();
  }

  showTemperature() {
    $("#chat-temperature-value").textContent = Number($("#chat-temperature").value).toFixed(2);
  }

  /** Offer the models /health lists, keeping the user's choice across refreshes. */
  setModels(models, defaultName) {
    const select = $("#chat-model");
    const chosen = select.value || defaultName;
    const names = models.filter((m) => m.state !== "error").map((m) => m.name);
    if (names.join("\n") === [...select.options].map((o) => o.value).join("\n")) return;
    fill(select, ...names.map((name) => el("option", { value: name, selected: name === chosen }, name)));
  }

  clear() {
    this.controller?.abort();
    this.messages = [];
    fill($("#transcript"), el("div", { class: "transcript-empty" }, el("strong", {}, "Try a prompt"), el("span", {}, "Answers stream here, with time to first token, tokens per second and prefix-cache reuse for each.")));
    this.setPlaceholder();
  }

  /** After a tool call the next message answers it: say so in the composer. */
  pendingTools() {
    const last = this.messages[this.messages.length - 1];
    return last?.role === "assistant" ? last.content.filter((b) => b.type === "tool_use") : [];
  }

  setPlaceholder() {
    const tools = this.pendingTools();
    $("#prompt").placeholder = tools.length ? `Type the result of ${tools.map((t) => t.name).join(", ")} to send it back` : "Ask something… (Enter sends, Shift+Enter for a new line)";
  }

  request(userContent) {
    const body = {
      model: $("#chat-model").value || undefined,
      max_tokens: Number($("#chat-max-tokens").value) || 256,
      temperature: Number($("#chat-temperature").value),
      messages: [...this.messages, { role: "user", content: userContent }],
    };
    const system = $("#chat-system").value.trim();
    if (system) body.system = system;
    if ($("#chat-thinking").checked) body.thinking = { type: "enabled", budget_tokens: Math.max(1024, body.max_tokens) };
    const tools = $("#chat-tools").value.trim();
    if (tools) body.tools = JSON.parse(tools);
    return body;
  }

  async send() {
    const text = $("#prompt").value.trim();
    if (!text || this.controller) return;
    const pending = this.pendingTools();
    const userContent = pending.length ? pending.map((t) => ({ type: "tool_result", tool_use_id: t.id, content: text })) : text;
    let body;
    try {
      body = this.request(userContent);
    } catch (error) {
      this.toast(`The tools field is not valid JSON (${error.message}): give a JSON list of tool definitions, or empty it.`);
      return;
    }
    $(".transcript-empty")?.remove();
    $("#transcript").append(el("div", { class: "msg user" }, el("div", { class: "role" }, pending.length ? "Tool result" : "You"), el("div", { class: "text" }, text)));
    $("#prompt").value = "";
    const answer = new Answer($("#transcript"));
    this.controller = new AbortController();
    this.busy(true);
    try {
      await streamMessage(body, (name, data) => answer.event(name, data), this.controller.signal);
      answer.finish();
      this.messages.push({ role: "user", content: userContent }, { role: "assistant", content: answer.blocks() });
    } catch (error) {
      if (error.name === "AbortError") answer.finish("stopped");
      else answer.fail(error);
      if (error instanceof ApiError && error.status === 401) this.onAuthError(error);
    } finally {
      this.controller = null;
      this.busy(false);
      this.setPlaceholder();
    }
  }

  busy(on) {
    $("#send").hidden = on;
    $("#stop").hidden = !on;
  }

  toast(message) {
    $("#transcript").append(el("div", { class: "msg notice" }, message));
  }
}

/** One assistant answer as it streams: its blocks, rendered as they grow, and its figures. */
class Answer {
  constructor(transcript) {
    this.started = performance.now();
    this.firstAt = null;
    this.usage = {};
    this.stopReason = null;
    this.content = [];
    this.views = [];
    this.body = el("div", { class: "blocks" });
    this.stats = el("div", { class: "stats" }, el("span", { class: "stat-wait" }, "waiting for the first token…"));
    this.node = el("div", { class: "msg assistant", dataset: { state: "streaming" } }, el("div", { class: "role" }, "Assistant"), this.body, this.stats);
    transcript.append(this.node);
    this.node.scrollIntoView({ block: "end" });
  }

  event(name, data) {
    if (name === "message_start") this.usage = { ...data.message.usage };
    else if (name === "content_block_start") this.open(data.content_block);
    else if (name === "content_block_delta") this.delta(data.delta);
    else if (name === "content_block_stop") this.close();
    else if (name === "message_delta") {
      Object.assign(this.usage, data.usage);
      this.stopReason = data.delta.stop_reason;
    } else if (name === "error") throw new ApiError(500, data.error?.message || "the stream failed");
  }

  open(block) {
    const index = this.content.length;
    this.content.push(structuredClone(block));
    let view;
    if (block.type === "thinking") {
      view = el("pre", { class: "thinking-text" });
      this.body.append(el("details", { class: "block thinking", open: true }, el("summary", {}, "Thinking"), view));
    } else if (block.type === "tool_use") {
      view = el("pre", { class: "tool-input" });
      this.body.append(el("div", { class: "block tool" }, el("div", { class: "tool-head" }, el("span", { class: "tool-label" }, "Tool call"), el("code", {}, block.name), el("span", { class: "tool-id" }, block.id)), view));
      this.content[index].partial = "";
    } else {
      view = el("div", { class: "block text" });
      this.body.append(view);
    }
    this.views.push(view);
  }

  delta(delta) {
    const block = this.content[this.content.length - 1];
    const view = this.views[this.views.length - 1];
    if (!block) return;
    if (this.firstAt === null && (delta.type === "text_delta" || delta.type === "thinking_delta" || delta.type === "input_json_delta")) {
      this.firstAt = performance.now();
      fill(this.stats, el("span", {}, `first token ${duration((this.firstAt - this.started) / 1000)}`));
    }
    if (delta.type === "text_delta") {
      block.text += delta.text;
      view.textContent = block.text;
    } else if (delta.type === "thinking_delta") {
      block.thinking += delta.thinking;
      view.textContent = block.thinking;
    } else if (delta.type === "signature_delta") {
      block.signature = delta.signature;
    } else if (delta.type === "input_json_delta") {
      block.partial += delta.partial_json;
      view.textContent = block.partial;
    }
    this.node.scrollIntoView({ block: "end" });
  }

  close() {
    const block = this.content[this.content.length - 1];
    const view = this.views[this.views.length - 1];
    if (block?.type === "tool_use") {
      try {
        block.input = JSON.parse(block.partial || "{}");
      } catch {
        block.input = {};
      }
      delete block.partial;
      view.textContent = JSON.stringify(block.input, null, 2);
    }
    if (block?.type === "thinking") view.parentElement.open = false;
  }

  /** The content blocks as the API takes them back in the next turn. */
  blocks() {
    return this.content.filter((b) => b.type !== "text" || b.text);
  }

  finish(how) {
    const end = performance.now();
    const out = this.usage.output_tokens;
    const stats = [];
    if (this.firstAt !== null) stats.push(["ttft", "first token", duration((this.firstAt - this.started) / 1000)]);
    if (out > 1 && this.firstAt !== null && end > this.firstAt) stats.push(["tps", "speed", `${number((out - 1) / ((end - this.firstAt) / 1000))} tok/s`]);
    if (out !== undefined && !how) stats.push(["tokens", "tokens", `${number(this.usage.input_tokens + (this.usage.cache_read_input_tokens || 0))} in · ${number(out)} out`]);
    if (!how) stats.push(["cache", "cache read", number(this.usage.cache_read_input_tokens || 0)]);
    stats.push(["stop", "stop", how || this.stopReason || "—"]);
    fill(this.stats, ...stats.map(([name, label, value]) => el("span", { dataset: { stat: name } }, el("em", {}, label), " ", value)));
    if (!this.content.length && !how) this.body.append(el("div", { class: "block empty" }, "(no text)"));
    this.node.dataset.state = how ? "stopped" : "done";
  }

  fail(error) {
    this.node.dataset.state = "error";
    this.body.append(el("div", { class: "block error", role: "alert" }, error.message));
    fill(this.stats);
  }
}
