"""The glue a user runs: entry points, the builder, data modules, strategies and the results writer."""
