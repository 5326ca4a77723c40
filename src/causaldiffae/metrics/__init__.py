"""Counterfactual evaluation metrics (spec/evaluation.md)."""
