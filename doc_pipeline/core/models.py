"""Gemini models: their list prices, and the generation settings each model family takes.

Prices are USD per million tokens on the Gemini Developer API (standard tier, text), as listed
on Google's pricing page (read 2026-12-02; see README). Thinking tokens are billed as output.
A model not in the table needs its prices in the provider's config, so `costs` is never
silently wrong when a run overrides the model.

Families differ in what they accept: Gemini 3 models take `thinking_level` (never together
with `thinking_budget`: that is a 400) and are documented to loop or degrade below their
default temperature 1.0, so no temperature is sent to them; Gemini 2.5 models take
`thinking_budget` and a temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from doc_pipeline.core.failures import InvalidSettings
from doc_pipeline.core.ledger import Usage

THINKING = ("minimal", "low", "medium", "high", "model_default")


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float = 0.0  # embeddings have no output

    def cost(self, usage: Usage) -> Decimal:
        output = usage.output_tokens + usage.thinking_tokens  # thinking is billed as output
        usd = (
            usage.prompt_tokens * self.input_per_million + output * self.output_per_million
        ) / 1_000_000
        return Decimal(str(round(usd, 6)))


PRICES: dict[str, Price] = {
    "gemini-3.5-flash-lite": Price(0.30, 2.50),
    "gemini-3.1-flash-lite": Price(0.25, 1.50),
    "gemini-3.5-flash": Price(1.50, 9.00),
    "gemini-3.6-flash": Price(1.50, 7.50),
    "gemini-3.8-flash": Price(1.50, 7.50),  # 0.75 / 3.75 until 2026-12-31 (introductory)
    "gemini-2.5-flash": Price(0.30, 2.50),  # retired 2026-12-01, kept for past ledgers
    "gemini-2.5-flash-lite": Price(0.10, 0.40),
    "gemini-embedding-001": Price(0.15),
    "gemini-embedding-2": Price(0.20),
}


def price_of(
    model: str, input_per_million: float | None, output_per_million: float | None
) -> Price:
    """The configured prices where given, else the model's list prices."""
    listed = PRICES.get(model)
    if listed is None and input_per_million is None:
        raise InvalidSettings(
            f"no list price known for model {model!r}: set the provider's price fields for it"
        )
    return Price(
        listed.input_per_million if input_per_million is None else input_per_million,
        (listed.output_per_million if listed else 0.0)
        if output_per_million is None
        else output_per_million,
    )


def is_gemini_3(model: str) -> bool:
    return model.startswith("gemini-3")


# Gemini 2.5 thinking budgets (tokens) for each level; Pro cannot think less than 128.
_BUDGETS = {"minimal": 0, "low": 1_024, "medium": 8_192, "high": 24_576}


def generation_settings(model: str, thinking: str, temperature: float) -> dict[str, Any]:
    """GenerateContentConfig entries for the model's family: its thinking setting, and a
    temperature only where the family takes one."""
    if thinking not in THINKING:
        raise InvalidSettings(f"unknown thinking {thinking!r}; one of {', '.join(THINKING)}")
    if is_gemini_3(model):
        if thinking == "model_default":
            return {}
        # Flash-Lite models think `minimal`ly; larger Flash models start at `low`.
        level = "low" if thinking == "minimal" and "lite" not in model else thinking
        return {"thinking_config": {"thinking_level": level}}
    settings: dict[str, Any] = {"temperature": temperature}
    if model.startswith("gemini-2.5") and thinking != "model_default":
        budget = _BUDGETS[thinking]
        if "pro" in model:
            budget = max(budget, 128)
        settings["thinking_config"] = {"thinking_budget": budget}
    return settings
