"""Face masks rendered from 68 landmarks (iBUG-68 order, as in FG-NET's .pts files).

The command that masks a folder of photos is ``python -m fgmask_jax.masks.apply``; it is
not imported here, so that importing this package defines no command-line flags. Its
library is ``fgmask_jax.data.masked_photos`` (a folder of photos, with a manifest) over
``masks.copies`` (the masked copies of one photo).
"""

from fgmask_jax.masks.pts import format_pts, parse_pts, read_pts
from fgmask_jax.masks.render import (
    MASK_COLORS,
    MASK_KINDS,
    LandmarkError,
    mask_color,
    mask_region,
    render_mask,
)
from fgmask_jax.masks.texture import CLOTH_PATTERNS

__all__ = [
    "CLOTH_PATTERNS",
    "MASK_COLORS",
    "MASK_KINDS",
    "LandmarkError",
    "mask_color",
    "mask_region",
    "format_pts",
    "parse_pts",
    "read_pts",
    "render_mask",
]
