__all__ = ["compression_results", "fit", "results", "robustness_report", "scoring", "shipping", "tracking"]
