"""Server side only: aggregators, controllers and recipes. Nothing here imports src.learners."""
