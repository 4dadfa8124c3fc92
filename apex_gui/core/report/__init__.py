"""Reports: collected results and the model card."""
