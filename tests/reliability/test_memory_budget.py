"""Long conversations within a memory budget, on a real `pensieve start`.

A tiny random llama whose KV cache is most of what a sequence holds (8 KB per token in float32,
64 MB for its 8k window) is served with a 0.75 GB budget: one full window fits beside the weights
and activations, five do not. Before the shared KV budget the window was cut to a fifth to reserve
five slots, and prefill's attention scores were not in the plan at all (the MLX peak went over
the budget). Now one request of 90% of the window is served, five long ones at once all succeed
(some wait their turn), and MLX's peak stays under the budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from pensieve.modelmgr.synthetic import make_random_model
from tests.support import CliServer, health

pytestmark = pytest.mark.slow

BUDGET_GB = 0.75
WINDOW = 8192
KEY = "pensieve-local-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    model = make_random_model(tmp_path_factory.mktemp("models") / "long-llama", "long-llama", seed=2)
    home = tmp_path_factory.mktemp("home")
    cli = CliServer(home, "--model", str(model), env={
        "PENSIEVE_MODEL_MEMORY_BUDGET_GB": str(BUDGET_GB), "PENSIEVE_PERFORMANCE_WARMUP": "false"})  # fmt: skip
    cli.start()
    yield cli
    cli.stop()


def words(n: int, seed: int) -> str:
    """About n tokens of varied text (each of these words is one token of the embedded tokenizer)."""
    vocab = ["river", "stone", "maple", "cloud", "amber", "delta", "orbit", "piano", "lemon", "tiger"]
    return " ".join(vocab[(i * 7 + i // 10 + seed) % 10] for i in range(n))


async def message(session: aiohttp.ClientSession, base: str, text: str) -> tuple[int, dict]:
    body = {"model": "m", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": text}]}
    async with session.post(f"{base}/v1/messages", json=body, headers={"x-api-key": KEY}) as response:
        return response.status, await response.json()


async def test_long_requests_fit_the_budget_and_the_peak_stays_under_it(server: CliServer) -> None:
    status = health(server.base_url)
    (model,) = [m for m in status["models"] if m["state"] == "loaded"]
    assert model["context_length"] == WINDOW  # the whole window, not a fifth of it
    budget = status["memory"]["budget_bytes"]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        code, body = await message(session, server.base_url, words(int(0.9 * WINDOW), 0))
        assert code == 200, body
        assert body["usage"]["input_tokens"] > 0.85 * WINDOW
        results = await asyncio.gather(*(message(session, server.base_url, words(int(0.7 * WINDOW), s)) for s in range(1, 6)))
    assert [code for code, _ in results] == [200] * 5, [b for _, b in results]
    after = health(server.base_url)
    (model,) = [m for m in after["models"] if m["state"] == "loaded"]
    print(f"MLX peak {after['memory']['peak_bytes'] / 2**20:.0f} MiB of a {budget / 2**20:.0f} MiB budget; KV {model['kv']}")
    assert after["memory"]["peak_bytes"] <= budget, (after["memory"], model["kv"])
    assert model["kv"]["capacity_bytes"] < 5 * 64 * 1024**2  # five full windows really did not fit
