"""The model registry: recording trained artifacts, signing their manifests, publishing them."""
