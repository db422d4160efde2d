"""Pure loss functions of log-probs, rewards and values: no models, no config, no I/O."""
