"""Lightning strategies that Lightning does not ship (model averaging, asynchronous SGD, pipeline
parallelism), each chosen with `strategy=NAME`.

Contract with recipes.train: a strategy may expose `comm_bytes` (int), the bytes this rank sent in
collectives (gradients, parameters, activations) during fit; results.json's `parallel` section
reports it per optimizer step next to the samples per second.
"""


def refuse_self_stepping(task: type, strategy: str, why: str) -> None:
    """Start-up refusal (ValueError, one line) of a task that steps its own optimizers (Lightning's
    manual optimization, e.g. task=gan), for a strategy built around one optimizer step per batch."""
    if getattr(task, "manual_optimization", False):
        raise ValueError(
            f"strategy={strategy} cannot train {task.__name__}, which steps its own optimizers "
            f"(task=gan): {why}; use trainer=ddp_sim (strategy=ddp) or strategy=single"
        )
