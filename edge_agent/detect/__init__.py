"""Turning readings into anomaly decisions with the active model."""
