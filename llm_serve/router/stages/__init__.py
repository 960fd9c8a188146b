"""The stages of the router's generation path, one module each; pipeline.py runs them in order."""
