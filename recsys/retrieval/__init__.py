"""Retrieval: the item index (brute force, ScaNN) and the engine that answers recommendation lookups."""
