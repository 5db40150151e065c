"""Where runs and files live: local folders or object storage, checkpoints, exported backbones, and the runs a
storage path holds."""
