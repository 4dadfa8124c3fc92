"""The Plan dock: profile and plan panel, Export, and Fit to budget (the optimizer's dialog)."""
