"""The experiments as libraries: one method under one config (`method`), the study's eight
methods (`study`), the same study under several protocols side by side (`leak`, the copy
leak, and `leak_control`, its control for the subject protocol's fewer training persons),
and what the mask costs (`mask_gap`, with its report `mask_gap_report`). The commands
``fgmask_jax.main``, ``fgmask_jax.study`` and ``fgmask_jax.mask_gap`` call them.

JAX and the data pipeline are imported inside the functions that train, read data or
write files, so that a command's ``--help`` and its flag errors answer without them."""
