"""The Results tab: measured runs, the KL-vs-size curve, and publishing to the Hub."""
