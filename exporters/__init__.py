"""Export formats for edgevision iterations (one module per format; registry comes with the exporter issue)."""
