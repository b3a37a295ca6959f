"""X-ARES-comparable evaluation: task registry, shard readers, embedding cache, linear probe and
kNN protocols, metrics and reports. Two modes: `xares` (X-ARES 0.1.3 exactly) and `clean`."""

from harmonia.eval.knn import knn_scores
from harmonia.eval.runner import evaluate, load_encoder_source
from harmonia.eval.tasks import (
    BUILTIN_TASKS,
    TABLE1_TASKS,
    EvalDataError,
    Task,
    TaskError,
    get_task,
    load_task_file,
    resolve_tasks,
)

__all__ = ["BUILTIN_TASKS", "TABLE1_TASKS", "EvalDataError", "Task", "TaskError", "evaluate", "get_task",
           "knn_scores", "load_encoder_source", "load_task_file", "resolve_tasks"]
