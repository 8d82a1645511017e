"""Apache Beam jobs: build the interaction dataset, batch recommendations for every user."""
