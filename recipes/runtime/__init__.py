__all__ = [
    "atomic",
    "created_dirs",
    "guard",
    "interrupt",
    "libraries",
    "overrides",
    "process_env",
    "resolvers",
    "run_dir_check",
    "run_lock",
    "threads",
]
