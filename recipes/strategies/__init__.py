"""Lightning strategies that Lightning does not ship (model averaging, asynchronous SGD, pipeline
parallelism), each chosen with `strategy=NAME`.

Contract with recipes.train: a strategy may expose `comm_bytes` (int), the bytes this rank sent in
collectives (gradients, parameters, activations) during fit; results.json's `parallel` section
reports it per optimizer step next to the samples per second.
"""
