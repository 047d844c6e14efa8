"""Defaults that the optimizers and the app's config share, kept in one place.

No torch import here: the config reads these when the command line is checked, before torch loads.
"""

# minibatches per outer step of Parle and Entropy-SGD (``L``), in ``Parle()`` and in the app
NUM_INNER_STEPS = 10
