"""Model zoo; importing registers every model with timm."""

from . import shiftwise_v1, shiftwise_v2, slak, unireplknet  # noqa: F401  (registration side effect)
