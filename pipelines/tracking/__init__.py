"""MLflow: a run's start and end, its metrics, pictures and logged model; and the progress line on the console."""
