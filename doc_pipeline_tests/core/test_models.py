"""Models (core/models.py): list prices by model name, and the settings each family takes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.genai import types

from doc_pipeline.core.failures import InvalidSettings
from doc_pipeline.core.ledger import Usage
from doc_pipeline.core.models import PRICES, Price, generation_settings, price_of


def test_cost_counts_thinking_as_output():
    price = Price(0.30, 2.50)
    usage = Usage(prompt_tokens=1_000_000, output_tokens=100_000, thinking_tokens=100_000)
    assert price.cost(usage) == Decimal("0.8")  # 0.30 + 0.2 * 2.50


def test_a_model_is_priced_from_the_table_unless_the_config_says_otherwise():
    assert price_of("gemini-3.5-flash-lite", None, None) == PRICES["gemini-3.5-flash-lite"]
    assert price_of("gemini-3.5-flash-lite", 1.0, None) == Price(1.0, 2.50)
    assert price_of("my-tuned-model", 0.5, 3.0) == Price(0.5, 3.0)
    with pytest.raises(InvalidSettings, match="no list price known for model 'my-tuned-model'"):
        price_of("my-tuned-model", None, None)


def test_gemini_3_gets_a_thinking_level_and_no_temperature():
    assert generation_settings("gemini-3.5-flash-lite", "minimal", 0.0) == {
        "thinking_config": {"thinking_level": "minimal"}
    }
    # A larger Flash model thinks at least `low`; the model's default sends nothing.
    assert generation_settings("gemini-3.8-flash", "minimal", 0.0) == {
        "thinking_config": {"thinking_level": "low"}
    }
    assert generation_settings("gemini-3.5-flash-lite", "model_default", 0.0) == {}


def test_gemini_2_5_gets_a_thinking_budget_and_its_temperature():
    assert generation_settings("gemini-2.5-flash", "minimal", 0.0) == {
        "temperature": 0.0,
        "thinking_config": {"thinking_budget": 0},
    }
    assert generation_settings("gemini-2.5-pro", "minimal", 0.2)["thinking_config"] == {
        "thinking_budget": 128  # Pro cannot stop thinking
    }
    assert generation_settings("gemini-2.5-flash", "model_default", 0.0) == {"temperature": 0.0}


@pytest.mark.parametrize("model", ["gemini-3.5-flash-lite", "gemini-2.5-flash"])
def test_the_settings_are_what_the_sdk_takes(model):
    config = types.GenerateContentConfig(**generation_settings(model, "low", 0.0))
    assert config.thinking_config is not None
    assert (config.thinking_config.thinking_level is None) != (
        config.thinking_config.thinking_budget is None
    )  # never both: the API answers that with a 400


def test_an_unknown_thinking_setting_is_refused():
    with pytest.raises(InvalidSettings, match="unknown thinking 'lots'"):
        generation_settings("gemini-3.5-flash-lite", "lots", 0.0)
