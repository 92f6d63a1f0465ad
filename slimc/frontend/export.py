"""`torch.export` capture for the frontend and the FX-level passes.

The implementation lives in `slimc.ir.exported` (so `Program.exported()` in `slimc.ir` can use it
without importing a layer above it); this module is the frontend's stable name for it.

Example::

    ep = export_module(model.eval(), (torch.randn(1, 3, 224, 224),))
    owner = parameter_owners(ep)          # {"p_layer1_0_conv1_weight": "layer1.0.conv1.weight", ...}
    module_of = parameter_modules(ep)     # {"p_layer1_0_conv1_weight": "layer1.0.conv1", ...}
"""

from __future__ import annotations

from ..ir.exported import (export_error, export_module, exported_program_of, output_names, parameter_modules,
                           parameter_owners, user_frame)

__all__ = ["export_module", "exported_program_of", "parameter_owners", "parameter_modules", "output_names",
           "user_frame", "export_error"]
