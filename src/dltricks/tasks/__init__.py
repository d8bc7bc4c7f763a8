"""Tasks: what the trainer needs to know about a problem besides the model.

A :class:`Task` bundles the training and evaluation loaders with the loss, the per-batch metrics and,
where the problem needs one, its own evaluation (sliding windows for segmentation, greedy decoding for
dates, several lengths for induction heads). Importing this package registers every task below, so
``build_task(name)`` finds them by name (``--data NAME`` on the command line):

* :mod:`~dltricks.tasks.classification`: ``mnist``, ``mnist-embedded``, ``cifar10``, ``imagefolder``;
* :mod:`~dltricks.tasks.segmentation`: ``isbi2012-membrane``;
* :mod:`~dltricks.tasks.detection`: ``mnist-detection``;
* :mod:`~dltricks.tasks.dates`: ``dates`` (seq2seq);
* :mod:`~dltricks.tasks.sequence`: ``selective_copying``, ``induction_heads``, ``smnist``, ``psmnist``,
  ``listops``.
"""

from dltricks.tasks.base import (EvalContext, Loader, Task, build_task, check_task_options, classification_loss,
                                 classification_metrics, list_tasks, register_task)
from dltricks.tasks import classification, dates, detection, segmentation, sequence  # noqa: F401  (register the tasks)

__all__ = ["Loader", "Task", "EvalContext", "register_task", "build_task", "check_task_options", "list_tasks",
           "classification_loss", "classification_metrics"]
