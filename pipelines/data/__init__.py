"""Images as data: the Parquet dataset store, decoding, sampling, row groups, augmentation and the Ray Data stream
that feeds training."""
