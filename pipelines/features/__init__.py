"""A backbone's features over a dataset, and the classifiers read on them (kNN, the linear probe): used by
training's online kNN, the logged model and evaluation."""
