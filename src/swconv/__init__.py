"""swconv: ShiftwiseConv networks, their fast operator, dynamic sparsity and training stack.

Importing the package registers every model with timm.
"""

from . import models  # noqa: F401  (timm registration)
from .models.convert import convert_reference_state_dict, to_reference_state_dict
from .ops import ShiftWiseConv2d, shift_wise_conv

__version__ = "0.1.0"
__all__ = ["ShiftWiseConv2d", "convert_reference_state_dict", "shift_wise_conv", "to_reference_state_dict"]
