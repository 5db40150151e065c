"""A pretraining end to end, as `pretrain()`: checks, the Train run, the logged model, the evaluation at the end."""
