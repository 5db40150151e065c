"""The configuration: its typed schema, each method's paper recipe, and loading presets with `--set` overrides."""
