"""Evaluation: ranking metrics, the one scorer, `recsys evaluate`, offline A/B comparison and the gate,
reports."""
