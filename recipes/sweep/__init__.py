__all__ = ["search_space", "study", "sweeper"]
