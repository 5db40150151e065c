"""A pretraining's Ray Train run: the checks before it, the driver, the worker loop, the step, the method and
optimizer built from the configuration, the distillation teacher."""
