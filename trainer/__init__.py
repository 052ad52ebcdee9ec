"""The workstation side: keypoint extraction, datasets, training, evaluation and signed bundles."""
