"""The main window and what hangs off it: menus, model loading, the model dock, settings,
the tools banner, Hugging Face download, and the wiring of the quality features."""
