"""kinship: learn whether two people are blood relatives from photos of their faces.

The domain library. It never imports prefect; GPU-only libraries are imported lazily.
"""

__version__ = "0.1.0"
