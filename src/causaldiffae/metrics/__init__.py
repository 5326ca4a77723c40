"""Counterfactual evaluation metrics (docs/method-notes.md, "Evaluation")."""
