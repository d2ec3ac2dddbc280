"""The exception types an entry point turns into one line on stderr and a non-zero exit.

Entry points print their message as a single line, with no traceback unless HYDRA_FULL_ERROR=1, so
every message must say what happened and what to do next.
"""

__all__ = ["EXIT_BAD_INPUT", "EXIT_SIGINT", "EXIT_SIGTERM", "RecipeError", "RunStopped"]

EXIT_BAD_INPUT = 2  # bad input (a config value, a path, a checkpoint): refused before anything was changed
EXIT_SIGTERM = 143  # 128 + SIGTERM, what a shell and SLURM report for a job stopped by SIGTERM
EXIT_SIGINT = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class RecipeError(Exception):
    """Bad input: a config value, a path, a checkpoint. The message is shown to the user as is."""


class RunStopped(Exception):
    """A run that started properly and was stopped (it diverged, a scheduler sent SIGTERM). Unlike a
    RecipeError, its run dir is kept: the logs and earlier checkpoints are the evidence, or the
    resume point. `exit_code` is the process's exit status (143 for SIGTERM, as SLURM expects)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
