"""Lightning callbacks that transform a model at scheduled points of training, one technique per file."""
