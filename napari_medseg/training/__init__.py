"""Pure training engine: configs, patch sampling, augmentation, losses, Mean Teacher, the loop."""
