"""The one exception type that means "the user asked for something invalid".

Entry points print its message as a single line and exit non-zero, with no traceback unless
HYDRA_FULL_ERROR=1, so every message must name the bad value and say what would be right.
"""


class RecipeError(Exception):
    """Bad input: a config value, a path, a checkpoint. The message is shown to the user as is."""
