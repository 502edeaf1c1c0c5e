"""fgmask_jax: age group, gender and expression of people wearing face masks.

Importing the package is cheap and imports no JAX: the TFDS builders and the
data tools depend on it without touching an accelerator.
"""

__version__ = "0.1.0"
