"""fgmask_jax: age group, gender and expression of people wearing face masks.

Importing the package is cheap and imports no JAX: the TFDS builders and the
data tools depend on it without touching an accelerator.
"""

import importlib.util as _util
import os as _os
import sys as _sys

__version__ = "0.1.0"


def _builders_of_this_checkout() -> None:
    """Makes ``fgmask_jax.tfds_builder`` the checkout's ``tfds_builder/`` folder.

    An install ships that folder inside the package (pyproject's package-dir). Run from a
    checkout's root, Python imports the checkout's ``fgmask_jax/`` ahead of any installed
    copy, and a copy installed without ``-e`` brings no mapping to the folder: the builders
    would be missing. Here they are found in the checkout itself, whatever was installed.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    folder = _os.path.join(_os.path.dirname(here), "tfds_builder")
    name = f"{__name__}.tfds_builder"
    if (name in _sys.modules or _os.path.isdir(_os.path.join(here, "tfds_builder"))
            or not _os.path.isfile(_os.path.join(folder, "__init__.py"))):
        return  # an installed copy (the folder is inside it), or not a checkout
    spec = _util.spec_from_file_location(name, _os.path.join(folder, "__init__.py"),
                                         submodule_search_locations=[folder])
    module = _util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)
    globals()["tfds_builder"] = module


_builders_of_this_checkout()
