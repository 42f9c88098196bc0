"""`mlpd predict`: batch scoring of a CSV or Parquet file as a job (mlpd.serving.batch)."""

from __future__ import annotations

import os
import shutil
import tempfile

import click

from mlpd.cli.common import json_option, logged_in_client
from mlpd.output import emit_json


@click.command()
@click.argument("model_uri")
@click.argument("input_file", metavar="INPUT")
@click.option("--output", help="The predictions' file name in the job's outputs (default predictions.csv or predictions.parquet: "
                                "the input's format).")
@click.option("--gpus", type=int, default=0, show_default=True, help="GPUs for the job.")
@click.option("-f", "--follow", is_flag=True, help="Then stream the job's output until it ends; exits with how it ended.")
@json_option
def predict(model_uri, input_file, output, gpus, follow, as_json):
    """Score INPUT (a .csv or .parquet file) with an MLflow model, as a job on the queue.

    \b
    mlpd predict models:/churn@prod customers.csv
    mlpd jobs outputs ID        # then: outputs-ID/predictions.csv

    The job runs in the model's serving environment (the image and requirements its deployment's
    replicas get), booked and quota'd like any job; the model URI is pinned to the version it names
    now. The predictions, one row per input row in the same order, land in the job's outputs in the
    input's format."""
    from mlpd.serving.batch import BatchError, check_file_name, check_readable, output_name
    from mlpd.cli.jobs import upload_code

    name = os.path.basename(input_file)
    try:
        check_readable(input_file)
        check_file_name(name, "INPUT")
        out = output_name(name, output)
    except BatchError as exc:
        raise click.ClickException(exc.message) from None
    if not os.path.isfile(input_file):
        raise click.ClickException(f"{input_file}: not a file")
    client = logged_in_client()
    with tempfile.TemporaryDirectory(prefix="mlpd-predict-") as tmp:
        try:
            os.link(input_file, os.path.join(tmp, name))  # no copy where the file system allows
        except OSError:
            shutil.copyfile(input_file, os.path.join(tmp, name))
        code = upload_code(client, tmp)
    result = client.post("/predict", {"model": model_uri, "input": name, "code": code, "output": out, "gpus": gpus})
    job = result["job"]
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"submitted job {job['id']} ({job['state']}) scoring {name} with {result['model']}; the predictions will be "
                   f"{result['output']}: mlpd jobs outputs {job['id']}", err=True)
        click.echo(job["id"])
    if follow:
        from mlpd.cli.jobs import follow_to_end

        follow_to_end(client, job["id"])
