"""Quality gates (mlpd.serving_gates): reading them, and why a run fails them, as people read it."""

from __future__ import annotations

import pytest

from mlpd.serving import deployments as serving
from mlpd.serving.gates import GateError, failures, parse_gates


def test_a_run_below_a_metric_gate_is_held_back_with_its_value_and_the_bound():
    assert failures(["metrics.accuracy>=0.9"], {"accuracy": 0.52}, {}) == ["metrics.accuracy 0.52 < 0.9"]
    assert failures(["metrics.accuracy>=0.9"], {"accuracy": 0.93}, {}) == []
    assert failures(["metrics.loss < 0.2", "metrics.accuracy>=0.9"], {"loss": 0.3, "accuracy": 0.95}, {}) == ["metrics.loss 0.3 >= 0.2"]


def test_a_missing_metric_or_tag_fails_and_tags_compare_as_text():
    assert failures(["metrics.accuracy>=0.9"], {}, {}) == ["metrics.accuracy not logged (gate metrics.accuracy>=0.9)"]
    assert failures(["tags.reviewed==yes"], {}, {"reviewed": "yes"}) == []
    assert failures(["tags.reviewed==yes"], {}, {"reviewed": "no"}) == ["tags.reviewed 'no' != 'yes'"]
    assert failures(["tags.reviewed==yes"], {}, {}) == ["tags.reviewed not set (gate tags.reviewed==yes)"]


@pytest.mark.parametrize("bad", ["accuracy>=0.9", "metrics.accuracy=>0.9", "metrics.accuracy>=high", "tags.stage>=1",
                                 "metrics.accuracy>=nan", "", "metrics.>=1"])
def test_a_gate_that_cannot_be_read_is_refused_with_its_form(bad):
    with pytest.raises(GateError, match="expected|not a number|== or !=|finite"):
        parse_gates([bad])


def test_gates_are_part_of_a_deployments_spec():
    spec = serving.parse_deployment_spec({"gates": [" metrics.accuracy >= 0.9 "]})
    assert spec["gates"] == ["metrics.accuracy>=0.9"]
    assert serving.parse_deployment_spec({})["gates"] == []
    with pytest.raises(GateError):
        serving.parse_deployment_spec({"gates": "metrics.accuracy>=0.9"})
