"""smolray: data-centric training of small language models on Ray.

The public surface is small: a typed `Recipe` (see `smolray.recipe`), and
the builders each entry point in `jobs/` calls in order.
"""

__version__ = "0.1.0"
