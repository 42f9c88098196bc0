"""Monitoring of deployments (mlpd.serving.monitoring): the PSI math on real distributions, reading
MLflow's request and answer shapes, a feature's reference collected then reduced to bins, and the
rows in a real SQLite state database as the API and /metrics read them."""

from __future__ import annotations

import json
import random

import pytest

from mlpd.serving import monitoring
from mlpd.serving.monitoring import Observed
from mlpd.store import Store

T0 = 1_800_000_000.0


def normal(n: int, mean: float = 0.0, sd: float = 1.0, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def drift_of(reference: list[float], later: list[float]) -> float:
    edges = monitoring.bin_edges(reference)
    value = monitoring.psi(monitoring.bin_counts(reference, edges), monitoring.bin_counts(later, edges))
    assert value is not None
    return value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_stream_shifted_by_two_standard_deviations_drifts_and_an_unshifted_one_does_not(seed):
    reference = normal(1000, 5.0, 3.0, seed)
    unshifted = normal(5000, 5.0, 3.0, seed + 100)
    shifted = normal(5000, 5.0 + 2 * 3.0, 3.0, seed + 200)
    assert drift_of(reference, unshifted) < 0.1
    assert drift_of(reference, shifted) > 0.25
    assert monitoring.psi_level(drift_of(reference, shifted)) == "drift"
    assert monitoring.psi_level(drift_of(reference, unshifted)) == "stable"


def test_psi_is_the_textbook_sum_and_zero_for_the_same_shares():
    assert monitoring.psi([10, 20, 70], [20, 40, 140]) == pytest.approx(0.0)
    # (0.5-0.25) ln(0.5/0.25) + (0.5-0.75) ln(0.5/0.75)
    assert monitoring.psi([25, 75], [50, 50]) == pytest.approx(0.25 * 0.6931471805599453 + 0.25 * 0.4054651081081644)
    assert monitoring.psi([0, 10], [10, 0]) > 10  # an empty bin counts as a tiny share: large, finite
    assert monitoring.psi([], []) is None and monitoring.psi([5, 5], [0, 0]) is None


def test_bins_are_the_references_deciles_and_a_constant_feature_gets_one_bin():
    edges = monitoring.bin_edges([float(i) for i in range(1000)])
    assert len(edges) == 9 and monitoring.bin_counts([float(i) for i in range(1000)], edges) == [100] * 10
    assert monitoring.bin_edges([3.0] * 50) == []
    assert monitoring.bin_counts([1.0, 2.0], []) == [2]


def test_quantiles_and_the_reservoir_stay_uniform_and_bounded():
    assert monitoring.quantiles([float(i) for i in range(101)]) == {"p5": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0}
    sample: list[float] = []
    seen = monitoring.reservoir_add(sample, 0, [float(i) for i in range(100_000)], cap=2000, rng=random.Random(5))
    assert seen == 100_000 and len(sample) == 2000
    assert 40_000 < monitoring.quantiles(sample)["p50"] < 60_000  # a uniform sample of all, not the first 2000


def test_features_and_predictions_are_read_from_each_of_mlflows_shapes():
    split = {"dataframe_split": {"columns": ["a", "b", "name"], "data": [[1, 2.5, "x"], [3, True, "y"]]}}
    assert monitoring.numeric_features(split) == {"a": [1.0, 3.0], "b": [2.5]}  # a boolean is not a number here
    records = {"dataframe_records": [{"a": 1.0, "b": 2.0}, {"a": 3.0}]}
    assert monitoring.numeric_features(records) == {"a": [1.0, 3.0], "b": [2.0]}
    assert monitoring.numeric_features({"inputs": {"a": [1, 2], "b": 3}}) == {"a": [1.0, 2.0], "b": [3.0]}
    assert monitoring.numeric_features({"instances": [[1, 2], [3, 4]]}) == {"0": [1.0, 3.0], "1": [2.0, 4.0]}
    assert monitoring.numeric_features({"inputs": [[1, float("nan")]]}) == {"0": [1.0]}
    assert monitoring.numeric_features(["not", "a", "dict"]) == {} and monitoring.numeric_features({"x": 1}) == {}
    big = {"dataframe_split": {"columns": ["a"], "data": [[float(i)] for i in range(50_000)]}}
    assert len(monitoring.numeric_features(big)["a"]) == monitoring.MAX_VALUES_PER_REQUEST
    assert monitoring.predictions_of({"predictions": [1.5, 2, "cat", True, [0.25, 0.75], {"score": 4}]}) == (
        [1.5, 2.0, 0.25, 4.0], ["cat", "True"])
    assert monitoring.predictions_of({"predictions": {"label": ["a", "b"]}}) == ([], ["a", "b"])
    assert monitoring.predictions_of("garbage") == ([], [])


def test_a_features_reference_is_collected_across_requests_then_kept_only_as_bin_counts():
    state = monitoring.merge_feature(None, normal(600), 1000)
    assert set(state) == {"reference"} and len(state["reference"]) == 600
    state = monitoring.merge_feature(state, normal(900, seed=2), 1000)  # 400 complete the reference, 500 count against it
    assert "reference" not in state and sum(state["expected"]) == 1000 and sum(state["actual"]) == 500
    state = monitoring.merge_feature(state, normal(100, seed=3), 1000)
    assert sum(state["actual"]) == 600 and sum(state["expected"]) == 1000


@pytest.fixture
def store(tmp_path):
    st = Store(str(tmp_path / "mlpd.db"))
    st.migrate()
    with st.write() as db:
        db.execute("""INSERT INTO deployments (id, owner, name, model_uri, spec, key_hash, created_at, updated_at)
                      VALUES ('d1', 'alice', 'churn', 'models:/churn/1', '{}', 'x', ?, ?)""", [T0, T0])
        db.execute("""INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_name, model_version, location, state, created_at)
                      VALUES ('r1', 'd1', 1, 'models:/churn/1', 'churn', '1', 'mlflow-artifacts:/1', 'serving', ?)""", [T0])
    return st


def request(values: list[float]) -> dict:
    return {"dataframe_split": {"columns": ["age"], "data": [[v] for v in values]}}


def test_observations_of_several_workers_add_up_in_the_state_database_and_read_as_drift(store):
    reference = normal(1000, 40, 10, seed=7)
    first, second = Observed(), Observed()
    for i in range(0, 1000, 100):
        first.add(request(reference[i:i + 100]), {"predictions": ["yes"] * 60 + ["no"] * 40})
    monitoring.add(store, {("d1", "r1"): first}, reference_size=1000, now=T0)
    row = json.loads(store.query_one("SELECT data FROM deployment_monitor")["data"])
    assert row["features"]["age"]["expected"] and "reference" not in row["features"]["age"]  # the values themselves are gone
    shifted = normal(3000, 40 + 2 * 10, 10, seed=8)
    for i in range(0, 3000, 300):
        second.add(request(shifted[i:i + 300]), {"predictions": [float(v) for v in range(300)]})
    monitoring.add(store, {("d1", "r1"): second}, reference_size=1000, now=T0 + 2)
    (summary,) = monitoring.summary(store, "d1")
    assert summary["deployment"] == "churn" and summary["version"] == "1" and summary["requests"] == 20
    (age,) = summary["features"]
    assert age["feature"] == "age" and age["psi"] > 0.25 and age["level"] == "drift" and age["reference"] == 1000 and age["since"] == 3000
    assert summary["predictions"]["labels"] == {"yes": 600, "no": 400}
    assert summary["predictions"]["count"] == 3000 and 100 < summary["predictions"]["quantiles"]["p50"] < 200
    # a deployment removed meanwhile gets no row
    with store.write() as db:
        db.execute("DELETE FROM deployment_monitor")
        db.execute("DELETE FROM deployments")
    monitoring.add(store, {("d1", "r1"): second}, reference_size=1000)
    assert store.query("SELECT * FROM deployment_monitor") == []
