"""Recipes: each builds data and models and supplies ``step(model, batch) -> (loss_sum, metrics)``
to the one training loop."""
