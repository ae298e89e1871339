"""Tests of keras_unetpp.schedule: the re-sizable cosine plan of a run."""

import json
import math

import keras
import numpy as np
import pytest

from keras_unetpp.errors import InputError
from keras_unetpp.schedule import CosinePlan, check_positive


def _rates(plan, steps):
    return np.array([plan(step) for step in steps])


def test_a_new_plan_is_keras_cosine_decay():
    plan = CosinePlan.new(1e-3, 100, alpha=0.05)
    keras_schedule = keras.optimizers.schedules.CosineDecay(1e-3, 100, alpha=0.05)
    for step in (0, 1, 37, 50, 99, 100, 150):
        assert plan(step) == pytest.approx(float(keras_schedule(step)), rel=1e-5)
    assert plan(100) == pytest.approx(0.05e-3)
    assert plan.final_rate == pytest.approx(0.05e-3)


def test_resize_keeps_the_rate_continuous_and_ends_at_the_final_rate():
    plan = CosinePlan.new(1.0, 100)
    before = plan(20)
    plan.resize(20, 40)  # a time budget that fits fewer epochs
    assert plan(20) == pytest.approx(before, abs=1e-12)
    assert plan(40) == pytest.approx(0.05)
    assert plan(39) > plan(40) and plan(60) == pytest.approx(0.05)
    rates = _rates(plan, range(0, 60))
    assert np.all(np.diff(rates) <= 1e-12)  # never goes up
    # Stretching it again (the budget fits more) is continuous too.
    at_30 = plan(30)
    plan.resize(30, 80)
    assert plan(30) == pytest.approx(at_30, abs=1e-12)
    assert plan(80) == pytest.approx(0.05)
    # Re-sizing at every step to the same end changes nothing.
    reference = _rates(plan, range(30, 90))
    for step in range(30, 80):
        plan.resize(step, 80)
    np.testing.assert_allclose(_rates(plan, range(30, 90)), reference, rtol=1e-12)


def test_extend_a_finished_plan_decays_from_where_it_ended():
    plan = CosinePlan.new(1.0, 100)
    plan.extend(100, 200)  # e.g. resumed with twice the epochs
    rates = _rates(plan, range(0, 201))
    assert np.all(np.diff(rates) <= 1e-12)
    assert plan(100) == pytest.approx(0.05)
    assert plan(200) == pytest.approx(0.05 * 0.05)
    # An unfinished plan is stretched instead: same rate, longer decay.
    plan = CosinePlan.new(1.0, 100)
    at_50 = plan(50)
    plan.extend(50, 300)
    assert plan(50) == pytest.approx(at_50)
    assert plan(300) == pytest.approx(0.05)
    assert plan(100) > 0.3  # not yet annealed: the decay was stretched


def test_the_plan_round_trips_through_strict_json():
    plan = CosinePlan.new(3e-3, 64)
    plan.resize(10, 40)
    plan.extend(40, 90)
    config = json.loads(json.dumps(plan.get_config(), allow_nan=False))
    copy = CosinePlan.from_config(config)
    for step in range(0, 100, 7):
        assert copy(step) == plan(step)


@pytest.mark.parametrize(
    "value", [math.inf, -math.inf, math.nan, 0.0, -1.0, True, "0.1"]
)
def test_check_positive_refuses_non_finite_and_non_positive(value):
    with pytest.raises(InputError, match="finite positive number"):
        check_positive(value, "learning_rate")
    with pytest.raises(InputError):
        CosinePlan.new(value, 10)
