"""Lightning strategies that Lightning does not ship (model averaging, asynchronous SGD, pipeline
parallelism), each chosen with `strategy=NAME`. What the core may ask of a strategy (start-up
declarations, `comm_bytes`, results.json's extra keys, the timeouts) is the strategy contract,
recipes.strategies.contract.RecipeStrategy, which each of them derives from.
"""

__all__ = [
    "async_counts",
    "async_nodes",
    "async_sgd",
    "contract",
    "ddp",
    "hogwild_launcher",
    "model_avg",
    "pipeline",
    "pipeline_stages",
    "self_stepping",
    "timeout",
]
