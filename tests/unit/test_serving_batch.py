"""Batch scoring (mlpd.serving.batch): formats, file names, readable inputs, the job spec; and the
scorer itself run on a real pyfunc model in this process (the container runs the same text)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlpd.serving import batch
from mlpd.serving.batch import BatchError


def test_the_format_comes_from_the_extension_and_anything_else_is_refused():
    assert batch.format_of("a.csv") == "csv" and batch.format_of("A.CSV") == "csv"
    assert batch.format_of("x.parquet") == "parquet" and batch.format_of("x.pq") == "parquet"
    with pytest.raises(BatchError) as exc:
        batch.format_of("data.json")
    assert exc.value.status == 400 and exc.value.code == "unknown_format" and "CSV" in exc.value.message


def test_the_output_keeps_the_input_format():
    assert batch.output_name("in.csv", None) == "predictions.csv"
    assert batch.output_name("in.parquet", None) == "predictions.parquet"
    assert batch.output_name("in.csv", "scored") == "scored.csv"
    assert batch.output_name("in.pq", "scored.parquet") == "scored.parquet"
    with pytest.raises(BatchError) as exc:
        batch.output_name("in.csv", "scored.parquet")
    assert exc.value.code == "invalid_field" and "input's format" in exc.value.message
    for bad in ("../x.csv", "a/b.csv", ".hidden.csv", "", "x" * 200 + ".csv"):
        with pytest.raises(BatchError):
            batch.output_name("in.csv", bad) if bad else batch.check_file_name(bad, "output")


def test_an_unreadable_input_is_refused_before_anything_is_sent(tmp_path):
    missing = tmp_path / "gone.csv"
    with pytest.raises(BatchError) as exc:
        batch.check_readable(str(missing))
    assert exc.value.code == "unreadable_input" and "cannot read" in exc.value.message
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(BatchError, match="empty"):
        batch.check_readable(str(empty))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"a,b\n\0\0\0")
    with pytest.raises(BatchError, match="NUL"):
        batch.check_readable(str(binary))
    fake = tmp_path / "fake.parquet"
    fake.write_text("x\n1\n")
    with pytest.raises(BatchError, match="not a Parquet file"):
        batch.check_readable(str(fake))
    with pytest.raises(BatchError) as exc:
        batch.check_readable(str(tmp_path / "x.xlsx"))
    assert exc.value.code == "unknown_format"
    good = tmp_path / "good.csv"
    good.write_text("x\n1.5\n")
    assert batch.check_readable(str(good)) == "csv"


def test_the_job_spec_runs_the_scorer_in_the_models_serving_environment():
    fields = {"model_uri": "models:/churn/3", "requirements": "scikit-learn==1.9.1\n"}
    spec = batch.job_spec(fields, "mlpd/train:1", "in.csv", None, "d" * 64, gpus=1)
    assert spec["image"] == "mlpd/train:1" and spec["requirements"] == "scikit-learn==1.9.1\n"
    assert spec["command"][:3] == ["python3", "-c", batch.SCORER]
    assert spec["command"][3:7] == ["models:/churn/3", "in.csv", "/outputs/predictions.csv", "csv"]
    assert spec["gpus"] == 1 and spec["code"] == "d" * 64 and spec["name"] == "predict-churn-3"
    parquet = batch.job_spec({"model_uri": "runs:/abc/model", "requirements": None}, "img", "in.parquet", "out", "d" * 64)
    assert parquet["requirements"] == batch.PYARROW + "\n" and parquet["command"][5] == "/outputs/out.parquet"
    from mlpd.kinds.jobspec import parse_spec

    parse_spec(spec)  # a spec the daemon accepts


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_scorer_writes_one_prediction_per_row_in_order_across_chunks(tmp_path, fmt):
    import pandas as pd
    import mlflow.pyfunc

    class Twice(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input["x"] * 2.0

    model_dir = tmp_path / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=Twice())
    frame = pd.DataFrame({"x": [i / 7 for i in range(1, 2501)]})
    src = tmp_path / f"in.{fmt}"
    frame.to_csv(src, index=False) if fmt == "csv" else frame.to_parquet(src, index=False)
    dst = tmp_path / "outputs" / f"predictions.{fmt}"
    dst.parent.mkdir()
    done = subprocess.run([sys.executable, "-c", batch.SCORER, str(model_dir), str(src), str(dst), fmt, "1000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "scored 2500 rows" in done.stdout
    out = pd.read_csv(dst) if fmt == "csv" else pd.read_parquet(dst)
    assert list(out.columns) == ["prediction"] and len(out) == 2500
    assert out["prediction"].tolist() == (frame["x"] * 2.0).tolist()  # exact: floats round-trip through the file
    assert not (tmp_path / "outputs" / f"predictions.{fmt}.partial").exists()
