"""The validators of settings files, fuzzed: any JSON value gives a valid configuration or one
line naming what is wrong, never another exception (catdiff.validation)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from catdiff.errors import UserError
from catdiff.pipeline import check_description
from catdiff.training.config import Recipe, TrainConfig
from catdiff.validation import validate

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
TRAIN_KEYS = st.sampled_from(["batch_size", "lr", "betas", "schedule", "model", "max_steps", "prediction",
                              "mixed_precision", "guidance_interval", "time_budget", "seed", "augment"])  # fmt: skip
PIPELINE_KEYS = st.sampled_from(["diffusion", "sample_shape", "sampling"])


def one_line(error: UserError) -> bool:
    return "\n" not in str(error) and len(str(error)) < 400


def options(keys: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    """Whole documents and documents whose known keys hold any JSON value."""
    return JSON | st.dictionaries(keys, JSON, max_size=4)


@settings(max_examples=600, deadline=None)
@given(values=options(TRAIN_KEYS))
def test_training_options_are_valid_or_one_line(values: object) -> None:
    try:
        config = TrainConfig.from_dict(values)  # type: ignore[arg-type]
    except UserError as error:
        assert one_line(error), str(error)
        return
    assert config.batch_size >= 1 and config.lr > 0 and math.isfinite(config.lr)
    assert all(isinstance(beta, float) for beta in config.betas)


@settings(max_examples=300, deadline=None)
@given(values=options(st.sampled_from(["size", "pixels", "mixed_precision", "channels_last", "lr"])))
def test_recipes_are_valid_or_one_line(values: object) -> None:
    try:
        recipe = validate(Recipe, values, "recipe")
    except UserError as error:
        assert one_line(error), str(error)
        return
    assert recipe.size is None or recipe.size >= 1


VALID = {
    "diffusion": {"schedule": {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}, "prediction": "v"},
    "sample_shape": [4, 16, 16],
    "sampling": {"sampler": "dpmpp_2m", "steps": 10, "spacing": "exponential", "guidance": 3.0},
}


@settings(max_examples=600, deadline=None)
@given(changes=st.dictionaries(PIPELINE_KEYS, JSON, max_size=2), drop=st.sets(PIPELINE_KEYS, max_size=1))
def test_pipeline_descriptions_are_valid_or_one_line(changes: dict, drop: set) -> None:
    description = {key: value for key, value in {**VALID, **changes}.items() if key not in drop}
    try:
        check_description(json.loads(json.dumps(description)), "pipeline.json")  # type: ignore[arg-type]
    except UserError as error:
        assert one_line(error) and str(error).startswith("pipeline.json"), str(error)
        return
    assert all(isinstance(n, int) and n >= 1 for n in description["sample_shape"])


def test_the_shipped_description_is_valid() -> None:
    check_description(VALID, "pipeline.json")  # type: ignore[arg-type]
