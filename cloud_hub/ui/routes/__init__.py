"""Console routes, one module per area; each stays thin and calls shared functions."""
