"""Explicit SIMD vectors for numba kernels: ``Vec``, eight lanes of an array's dtype.

numba leaves SLP vectorisation off and its loop vectoriser picks the wrong loop in a
register-blocked convolution (the reduction over input channels, by gathers), so the
kernels of ``dmflow.training.conv_kernels`` say what they mean: ``vload`` 8 contiguous
elements, ``vsplat_at`` one element into all lanes, ``vfma``, compare-and-select. LLVM
lowers an 8-lane vector to one AVX register (float32) or two (float64), or to SSE or
scalar code on CPUs without AVX. Indices are raw offsets into 1-D C-contiguous arrays:
no wraparound of negative indices and no bounds check, so the caller keeps them in range.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.datamodel import models, register_default
from numba.extending import intrinsic

LANES = 8


class Vec(types.Type):
    """An LLVM vector of ``LANES`` elements of ``dtype`` (numba's float32 or float64)."""

    def __init__(self, dtype: types.Type) -> None:
        self.dtype = dtype
        super().__init__(name=f"Vec({dtype}x{LANES})")


@register_default(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), LANES))


def _pointer(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [idx])


def _splat(builder, vty: ir.VectorType, scalar):
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(i32, 0))
    return builder.shuffle_vector(
        v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)
    )


@intrinsic
def vload(typingctx, arr, idx):
    """arr[idx : idx + 8] as a vector (unaligned load)."""
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, context.get_value_type(vt).as_pointer()), align=1)

    return vt(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """arr[idx : idx + 8] = v (unaligned store)."""

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, sig.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(ptr, args[2].type.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def vsplat_at(typingctx, arr, idx):
    """arr[idx] in every lane."""
    vt = Vec(arr.dtype)

    def codegen(context, builder, sig, args):
        scalar = builder.load(_pointer(context, builder, sig.args[0], args[0], args[1]))
        return _splat(builder, context.get_value_type(vt), scalar)

    return vt(arr, idx), codegen


@intrinsic
def vsplat(typingctx, value, like):
    """``value`` (cast to the dtype of array ``like``) in every lane."""
    vt = Vec(like.dtype)

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[0], sig.args[0], vt.dtype)
        return _splat(builder, context.get_value_type(vt), scalar)

    return vt(value, like), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused (one rounding)."""

    def codegen(context, builder, sig, args):
        vty = args[0].type
        bits = 32 if isinstance(vty.element, ir.FloatType) else 64
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{LANES}f{bits}"
        )
        return builder.call(fn, args)

    return a(a, b, c), codegen


def _binary(op: str):
    @intrinsic
    def binary(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, op)(*args)

        return a(a, b), codegen

    return binary


vadd = _binary("fadd")
vsub = _binary("fsub")
vmul = _binary("fmul")


def _select(cmp: str):
    @intrinsic
    def select(typingctx, a, b, x, y):
        def codegen(context, builder, sig, args):
            return builder.select(builder.fcmp_ordered(cmp, args[0], args[1]), args[2], args[3])

        return x(a, b, x, y), codegen

    return select


vsel_gt = _select(">")
"""x where a > b else y, lane by lane (a NaN compares false)."""
vsel_lt = _select("<")
"""x where a < b else y, lane by lane (a NaN compares false)."""
vsel_eq = _select("==")
"""x where a == b else y, lane by lane."""
