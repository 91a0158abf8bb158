"""The out-of-distribution photo set: which packaged photos it holds (catalogue) and how it is assembled."""
