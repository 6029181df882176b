"""Make Triton's CPU interpreter (TRITON_INTERPRET=1) work with numpy >= 2.4: triton 3.6 converts a one-element
array with int(), which numpy 2.4 rejects, so any loop with a runtime bound failed. Import before launching kernels."""

from __future__ import annotations


def patch() -> None:
    import numpy as np
    import triton.runtime.interpreter as interp

    if getattr(interp, "_moe_bench_patched", False):
        return
    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    interp._moe_bench_patched = True
