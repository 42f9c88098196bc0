"""Batch scoring: ``mlpd predict MODEL_URI INPUT`` as an ordinary job on the queue.

The CLI ships the input file (CSV or Parquet) as the job's code; the daemon resolves the model URI
to a pinned version (as a deployment does: :func:`mlpd.serving.deployments.resolve`), and submits a
job through :func:`mlpd.admission.submit_job` (booked, quota'd and scheduled like any job) that runs
in the model's serving environment: the image replicas run in (``jobs.default_image``) plus the
model's logged requirements without MLflow itself (:func:`mlpd.serving.models.serving_requirements`).
The job loads the pinned model through MLflow with its owner's credentials (like any job that
reads a model), scores the input in chunks, and writes the predictions, in the input's format, to
``/outputs/NAME``.

What a prediction is matches the scoring server: ``model.predict(frame)`` on a pandas frame read
from the file (pandas 3 reads CSV floats round-trip exact, so a row gives the same prediction as the
endpoint given the same numbers in JSON).
"""

from __future__ import annotations

import re
from typing import Any

from mlpd.errors import MlpdError

# How a file's name says its format; the output keeps the input's.
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_OUTPUT = {"csv": "predictions.csv", "parquet": "predictions.parquet"}
EXTENSION = {"csv": ".csv", "parquet": ".parquet"}
CHUNK_ROWS = 50_000  # rows scored at once: bounds the job's memory, not its input
PARQUET_MAGIC = b"PAR1"
# Parquet needs pyarrow, which the serving image does not carry: the job's environment adds it
# (the version the daemon's own MLflow runs with).
PYARROW = "pyarrow==25.0.1"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BatchError(MlpdError):
    """A batch scoring request that cannot run."""


def format_of(name: str) -> str:
    """'csv' or 'parquet' from a file name's extension; BatchError 400 (unknown_format) otherwise."""
    lower = name.lower()
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt
    raise BatchError(400, "unknown_format", f"{name[:200]!r}: unknown format; mlpd predict reads CSV (.csv) or Parquet (.parquet, .pq)")


def check_file_name(name: Any, field: str) -> str:
    """A plain file name (no directory), as the job's code and outputs hold it."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise BatchError(400, "invalid_field", f"{field}: expected a plain file name (letters, digits, '.', '_', '-'; "
                                               f"no directory), got {str(name)[:100]!r}")
    return name


def output_name(input_name: str, output: str | None) -> str:
    """The predictions file's name: `output` (given the input's extension when it has none), else
    predictions.csv / predictions.parquet. An output in another format than the input is refused."""
    fmt = format_of(input_name)
    if not output:
        return DEFAULT_OUTPUT[fmt]
    check_file_name(output, "output")
    if not any(output.lower().endswith(ext) for ext in FORMATS):
        return output + EXTENSION[fmt]
    if format_of(output) != fmt:
        raise BatchError(400, "invalid_field", f"output: {output!r} is {format_of(output)} but the input is {fmt}; "
                                               "the predictions are written in the input's format")
    return output


def check_readable(path: str) -> str:
    """The format of a local input file that can be read as such: BatchError 400 (unknown_format, or
    unreadable_input for a file that cannot be opened, is empty, or is not what its name says)."""
    fmt = format_of(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
            if fmt == "parquet":
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 4))
                tail = fh.read(4)
    except OSError as exc:
        raise BatchError(400, "unreadable_input", f"{path}: cannot read it ({exc.strerror or exc})") from None
    if fmt == "parquet":
        if size < 12 or not head.startswith(PARQUET_MAGIC) or tail != PARQUET_MAGIC:
            raise BatchError(400, "unreadable_input", f"{path}: not a Parquet file (no PAR1 header and footer)")
        return fmt
    first = head.split(b"\n", 1)[0].strip()
    if not first:
        raise BatchError(400, "unreadable_input", f"{path}: empty; a CSV file starts with a header line of column names")
    if b"\0" in head:
        raise BatchError(400, "unreadable_input", f"{path}: not a text CSV file (it holds NUL bytes)")
    try:
        first.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchError(400, "unreadable_input", f"{path}: its header line is not UTF-8 text") from None
    return fmt


def check_input_shipped(code_dir: str, input_name: str) -> None:
    """BatchError 400 unless the extracted code archive at `code_dir` holds `input_name` as a plain
    file at its top (looked up without following a link: the archive is the member's)."""
    import os
    import stat

    try:
        dir_fd = os.open(code_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # no such archive: admission refuses the code itself, with its own message
    try:
        st = os.stat(input_name, dir_fd=dir_fd, follow_symlinks=False)
        shipped = stat.S_ISREG(st.st_mode)
    except OSError:
        shipped = False
    finally:
        os.close(dir_fd)
    if not shipped:
        raise BatchError(400, "invalid_field", f"input: the code archive holds no file {input_name!r} at its top; "
                                               "'mlpd predict' ships the input for you")


def job_name(model_uri: str) -> str:
    """predict-MODEL (a valid job name) for a pinned model URI."""
    base = model_uri.split(":/", 1)[-1].replace("/", "-").replace("@", "-")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"predict-{base}").strip("-.")[:64].rstrip("-.")
    return name or "predict"


def scoring_command(model_uri: str, input_name: str, output: str) -> list[str]:
    """The job's command: SCORER (below) on the shipped input, writing /outputs/OUTPUT."""
    return ["python3", "-c", SCORER, model_uri, input_name, f"/outputs/{output}", format_of(input_name), str(CHUNK_ROWS)]


def job_spec(fields: dict[str, Any], image: str, input_name: str, output: str | None, code: str, gpus: int = 0) -> dict[str, Any]:
    """The job spec of a batch scoring run: the model's serving environment (`fields` are
    :func:`mlpd.serving.deployments.resolve`'s), the input shipped as `code`, the predictions to /outputs."""
    check_file_name(input_name, "input")
    out = output_name(input_name, output)
    requirements = fields.get("requirements") or ""
    if format_of(input_name) == "parquet" and "pyarrow" not in requirements.lower():
        requirements += PYARROW + "\n"
    spec: dict[str, Any] = {"command": scoring_command(fields["model_uri"], input_name, out), "gpus": gpus, "code": code,
                            "image": image, "name": job_name(fields["model_uri"])}
    if requirements:
        spec["requirements"] = requirements
    return spec


# Runs in the job's container (python3 -c SCORER URI INPUT OUTPUT FORMAT CHUNK): loads the pinned model
# with the job's MLflow credentials and scores the input chunk by chunk into OUTPUT.partial, renamed
# when complete, so /outputs never holds half a file under the final name.
SCORER = r'''
import os, sys
uri, src, dst, fmt, chunk = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
import numpy as np
import pandas as pd
import mlflow.pyfunc

model = mlflow.pyfunc.load_model(uri)


def frame(pred):
    if isinstance(pred, pd.DataFrame):
        return pred.reset_index(drop=True)
    if isinstance(pred, pd.Series):
        return pred.reset_index(drop=True).to_frame("prediction")
    arr = np.asarray(pred)
    if arr.ndim <= 1:
        return pd.DataFrame({"prediction": arr.reshape(-1)})
    arr = arr.reshape(len(arr), -1)
    return pd.DataFrame(arr, columns=[f"prediction_{i}" for i in range(arr.shape[1])])


tmp = dst + ".partial"
rows = 0
if fmt == "csv":
    first = True
    for part in pd.read_csv(src, chunksize=chunk):
        out = frame(model.predict(part))
        out.to_csv(tmp, mode="w" if first else "a", header=first, index=False)
        first, rows = False, rows + len(out)
    if first:
        open(tmp, "w").close()
else:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for batch in pq.ParquetFile(src).iter_batches(batch_size=chunk):
        table = pa.Table.from_pandas(frame(model.predict(batch.to_pandas())), preserve_index=False)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
        rows += table.num_rows
    if writer is None:
        pq.write_table(pa.table({}), tmp)
    else:
        writer.close()
os.replace(tmp, dst)
print(f"scored {rows} rows with {uri}: {dst}", flush=True)
'''
