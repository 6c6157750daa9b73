"""Training and evaluating the x2 upscaler (developer tools; the worker ships only the weights)."""
