__all__ = ["files", "format", "resume_paths", "trust"]
