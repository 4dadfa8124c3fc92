"""Screenshot drivers: they build and drive the whole window, so they sit above the views."""
