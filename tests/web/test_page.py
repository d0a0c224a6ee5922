"""The web page in headless Chromium against `pensieve start` on the embedded model.

What a person would check by looking: the status view shows the loaded model, a wrong key says
so, a chat answer streams in piece by piece with its figures, and the plots draw once requests
have run. Screenshots go to .cache/test-artifacts/web/.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from pensieve.models import ChatRequest
from tests.e2e.test_anthropic_sdk import CALL, WEATHER_TOOL, forced_output, reasoning_markers
from tests.support import API_KEY, CliServer, ServerThread

MODEL = "smollm2-135m-instruct"


def _unlock(page: Any, key: str = API_KEY) -> None:
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def test_status_renders_the_loaded_model_and_asks_for_the_key(page: Any, web_server: CliServer) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{web_server.base_url}/")
    row = page.locator(f'#models tr[data-model="{MODEL}"]')
    row.wait_for()
    assert "loaded" in row.locator(".badge").inner_text()
    assert row.locator("td").nth(3).inner_text() == "8,192"  # the context window
    assert page.locator("#server-state").inner_text() == "ok"
    assert page.locator("#key-panel").is_visible() and not page.locator("#key-error").is_visible()
    assert not page.locator(".charts").is_visible()  # nothing behind the key without it
    assert page.locator("#card-memory .value").inner_text().endswith("MB")
    # Everything the page loaded came from the server itself.
    assert requested and all(url.startswith(web_server.base_url) for url in requested), requested
    assert not page.errors


def test_a_wrong_key_shows_a_clear_message(page: Any, web_server: CliServer) -> None:
    page.goto(f"{web_server.base_url}/")
    page.locator("#key-panel").wait_for()
    _unlock(page, "not-the-key")
    error = page.locator("#key-error")
    error.wait_for()
    assert "refused this key" in error.inner_text() and "server.api_key" in error.inner_text()
    assert page.evaluate("sessionStorage.length") == 0  # a refused key is not kept
    assert not page.locator(".charts").is_visible()
    _unlock(page)
    page.locator(".charts").wait_for()
    assert not page.locator("#key-error").is_visible()
    assert page.evaluate("Object.values(sessionStorage)") == [API_KEY]
    assert not page.errors


RECORD_PARTIALS = """() => {
  window.partials = [];
  new MutationObserver(() => {
    const answer = [...document.querySelectorAll('.msg.assistant')].pop();
    if (!answer || answer.dataset.state !== 'streaming') return;
    const text = answer.querySelector('.block.text');
    if (text) window.partials.push(text.textContent);
  }).observe(document.querySelector('#transcript'), {subtree: true, childList: true, characterData: true});
}"""


def test_a_chat_answer_streams_token_by_token_with_its_figures(page: Any, web_server: CliServer) -> None:
    page.goto(f"{web_server.base_url}/#chat")
    _unlock(page)
    page.locator("#composer").wait_for()
    page.locator(f'#chat-model option[value="{MODEL}"]').wait_for(state="attached")
    page.fill("#chat-system", "You are a helpful assistant. You answer questions about geography in one or two sentences.")
    page.eval_on_selector("#chat-temperature", "(e) => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    page.fill("#chat-max-tokens", "48")
    page.evaluate(RECORD_PARTIALS)
    page.fill("#prompt", "What is the capital of France?")
    page.keyboard.press("Enter")
    done = page.locator('.msg.assistant[data-state="done"]')
    done.wait_for(timeout=60_000)
    final = done.locator(".block.text").inner_text()
    partials = [p for p in dict.fromkeys(page.evaluate("window.partials")) if p and p != final]
    assert len(partials) >= 2 and all(final.startswith(p) for p in partials), (partials, final)
    stats = {s.get_attribute("data-stat"): s.inner_text() for s in done.locator(".stats [data-stat]").all()}
    assert stats["ttft"].startswith("first token") and stats["tps"].endswith("tok/s"), stats
    assert stats["cache"] == "cache read 0" and stats["stop"] in ("stop end_turn", "stop max_tokens")
    # The second turn re-sends the first: the prefix cache serves it, and the page says so.
    page.fill("#prompt", "And the capital of Italy?")
    page.click("#send")
    second = page.locator('.msg.assistant[data-state="done"]').nth(1)
    second.wait_for(timeout=60_000)
    cached = int(second.locator('[data-stat="cache"]').inner_text().split()[-1])
    assert cached > 0
    assert not page.errors


def _post(web_server: CliServer, content: str) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 24, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(
        f"{web_server.base_url}/v1/messages",
        data=json.dumps(body).encode(),
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


PLOTTED = """(id) => {
  // Pixels of the plotted series (saturated colours; grid and labels are grey) above the
  // zero line, which a flat plot of nothing would not have.
  const canvas = document.getElementById(id);
  const { width, height } = canvas;
  const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  const ratio = window.devicePixelRatio || 1;
  const zero = Math.floor((canvas.clientHeight - 22) * ratio) - Math.ceil(4 * ratio);
  let count = 0;
  for (let y = 0; y < zero; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const i = (y * width + x) * 4;
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) count += 1;
    }
  }
  return { count, points: Number(canvas.dataset.points || 0) };
}"""


def test_the_plots_draw_after_a_few_requests(page: Any, web_server: CliServer) -> None:
    for question in ("Name a colour.", "Name a fruit.", "Name an animal."):
        assert _post(web_server, question)["usage"]["output_tokens"] > 0
    page.goto(f"{web_server.base_url}/")
    _unlock(page)
    page.locator(".charts").wait_for()
    page.wait_for_function("Number(document.getElementById('chart-tokens').dataset.points) >= 3")
    for chart in ("chart-tokens", "chart-requests", "chart-memory"):
        drawn = page.evaluate(PLOTTED, chart)
        assert drawn["points"] >= 3 and drawn["count"] > 30, (chart, drawn)
    tokens_card = page.locator("#card-tokens .note").inner_text()
    assert "generated since start" in tokens_card and not tokens_card.startswith("0 ")
    assert not page.errors


def _script(request: ChatRequest) -> str:
    """Think, say a word and call the tool; after the tool's result, quote it."""
    last = request.messages[-1]
    if last.role == "tool":
        return f"The tool said: {last.content}"
    return "<think>They want the weather: ask the tool.</think>\n\nLet me look that up." + CALL


def test_thinking_and_tool_calls_render_readably_and_a_tool_result_goes_back(page: Any, tiny_server: ServerThread) -> None:
    """The real server and parser on the tiny model, its sampler made to emit reasoning and a call."""
    page.goto(f"{tiny_server.base_url}/#chat")
    _unlock(page)
    page.locator("#composer").wait_for()
    page.check("#chat-thinking")
    page.click(".tools summary")
    page.fill("#chat-tools", json.dumps([WEATHER_TOOL]))
    with reasoning_markers(tiny_server), forced_output(tiny_server, _script) as seen:
        page.fill("#prompt", "Weather in Paris?")
        page.keyboard.press("Enter")
        first = page.locator('.msg.assistant[data-state="done"]')
        first.wait_for()
        assert first.locator(".thinking summary").inner_text() == "Thinking"
        assert first.locator(".thinking-text").text_content() == "They want the weather: ask the tool."
        assert first.locator(".block.text").inner_text() == "Let me look that up."
        tool = first.locator(".block.tool")
        assert tool.locator("code").inner_text() == "get_weather" and tool.locator(".tool-id").inner_text().startswith("toolu_")
        assert json.loads(tool.locator(".tool-input").inner_text()) == {"city": "Paris"}
        assert first.locator('[data-stat="stop"]').inner_text() == "stop tool_use"
        assert "get_weather" in (page.get_attribute("#prompt", "placeholder") or "")
        page.fill("#prompt", "18 C, sunny")
        page.keyboard.press("Enter")
        second = page.locator('.msg.assistant[data-state="done"]').nth(1)
        second.wait_for()
    assert second.locator(".block.text").inner_text() == "The tool said: 18 C, sunny"
    assert page.locator(".msg.user .role").nth(1).inner_text().lower() == "tool result"
    assert seen[-1].messages[-1].role == "tool" and seen[-1].messages[-2].tool_calls[0].name == "get_weather"
    assert not page.errors
