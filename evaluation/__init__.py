"""Evaluation: one module per family of metrics, each a function of model outputs."""
