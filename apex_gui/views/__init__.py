"""Qt widgets that render core objects and send the user's intent back."""
