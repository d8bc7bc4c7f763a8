"""See runs in a browser: ``dltricks serve`` (runs, evidence, a model playground) and ``dltricks runs``.

* :mod:`dltricks.serve.runs`: run directories below a folder, their status and best metrics, recipe differences,
  and the one function that turns a run name into a folder (no path leaves the folder);
* :mod:`dltricks.serve.predict`: a finished run's model on one new input, with the upload limits;
* :mod:`dltricks.serve.app`: the FastAPI app, its page and a server thread (docs/serve.md).

The package sits above the evidence report (it shows it) and below the commands that start it.
"""

from dltricks.serve.predict import Limits, UploadError, classify_image, decode_image, load_run_model
from dltricks.serve.runs import RunInfo, find_runs, recipe_diff, resolve_run

__all__ = ["Limits", "UploadError", "classify_image", "decode_image", "load_run_model", "RunInfo", "find_runs",
           "recipe_diff", "resolve_run"]
