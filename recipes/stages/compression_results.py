"""The report stage of recipes.train: results.json's compression section and the run dir's
report.md / compression.png, in the task's headline test metric."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from callbacks.formats.size_report import compression_report, layer_table, write_report
from callbacks.surgery.structure import set_module
from recipes.assembly.training import Parts
from recipes.stages.scoring import score

__all__ = ["compression_results"]


def compression_results(cfg: DictConfig, parts: Parts, metrics: dict[str, float]) -> dict[str, Any]:
    """results.json's compression section: sizes of the final shipped net, and the task's headline
    test metric (the first of `test_metric_names`, e.g. test/acc -> acc_before / acc_after) of the
    net as each step found it (the copy a step keeps before it first changes it) and at the end.
    Values of a step a resumed run did not see begin are absent."""
    module = parts.module
    metric = module.test_metric_names()[0]
    short, prefix = metric.rpartition("/")[2], module.shipped_prefix()
    report = compression_report(module.shipped_net, parts.compression, parts.dense_size)
    for step in parts.compression.values():
        report.update(step.results(module.shipped_net, report["dense_bytes"]))
    befores = [(name, getattr(step, "before", None)) for name, step in parts.compression.items()]
    values = []
    for _, net in befores:
        value = None
        if net is not None:
            probe = copy.deepcopy(module)  # same task, metrics and loss; the snapshot as its shipped net
            set_module(probe, prefix, net)
            value = score(cfg, probe, parts.datamodule)[metric]
        values.append(value)
    afters = [*values[1:], metrics[metric]]
    report["per_step"] = [
        {
            "step": name,
            **({f"{short}_before": before} if before is not None else {}),
            **({f"{short}_after": after} if after is not None else {}),
        }
        for name, before, after in zip(parts.compression, values, afters)
    ]
    if values[0] is not None:
        report[f"{short}_before"] = values[0]
    report[f"{short}_after"] = metrics[metric]
    first = befores[0][1]
    write_report(
        Path(cfg.paths.run_dir),
        report,
        layer_table(first, prefix) if first is not None else [],
        layer_table(module.shipped_net, prefix),
        metric,
    )
    return report
