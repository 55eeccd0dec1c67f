"""Deployment: exporting model files for other runtimes."""
