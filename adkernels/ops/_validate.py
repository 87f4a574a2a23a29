"""Argument checks shared by every op: each error names the argument and the fix."""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
REDUCTIONS = ("batchmean", "mean", "sum", "none")


def check_float_tensor(name: str, x, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype} "
            f"(cast with {name}.float())"
        )


def check_same(op: str, a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {a_name} is {a.dtype} but {b_name} is {b.dtype}; cast one so they match")
    if a.device != b.device:
        raise ValueError(f"{op}: {a_name} is on {a.device} but {b_name} is on {b.device}; move them to one device")


def check_logit_pair(op: str, student, teacher, last: str = "V") -> None:
    """Student and teacher logits: float tensors of one dtype, device and shape [..., last]."""
    check_float_tensor("student_logits", student, op)
    check_float_tensor("teacher_logits", teacher, op)
    check_same(op, "student_logits", student, "teacher_logits", teacher)
    if student.dim() < 1 or student.shape != teacher.shape:
        raise ValueError(
            f"{op}: student_logits and teacher_logits must have the same shape [..., {last}], got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def check_positive(op: str, name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return value


def check_unit_interval(op: str, name: str, value: float, *, open_low=False, open_high=False) -> float:
    value = float(value)
    lo_ok = value > 0 if open_low else value >= 0
    hi_ok = value < 1 if open_high else value <= 1
    if not (math.isfinite(value) and lo_ok and hi_ok):
        lo = "(0" if open_low else "[0"
        hi = "1)" if open_high else "1]"
        raise ValueError(f"{op}: {name} must be in {lo}, {hi}, got {value}")
    return value


def check_reduction(op: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_target(op: str, target, leading: torch.Size, device: torch.device) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{op}: target must be a torch.Tensor of class indices, got {type(target).__name__}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{op}: target must hold integer class indices (int64), got {target.dtype}")
    if target.shape != leading:
        raise ValueError(
            f"{op}: target must have the logits' leading shape {tuple(leading)}, got {tuple(target.shape)}"
        )
    if target.device != device:
        raise ValueError(f"{op}: target is on {target.device} but the logits are on {device}")


def check_target_range(op: str, target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Eager-only (it reads values): every counted target lies in [0, num_classes)."""
    if target.numel() == 0 or torch.compiler.is_compiling():
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        idx = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{op}: target[{idx}] = {int(target.reshape(-1)[idx])} is out of range [0, {num_classes}); "
            f"mark rows to skip with ignore_index={ignore_index}"
        )


def reduce_rows(rows: torch.Tensor, count: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply a reduction to per-row losses; mean/batchmean divide by the counted rows (never 0)."""
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    return total / count.clamp(min=1).to(total.dtype)


def _graph_is_kept() -> bool:
    """True inside a backward that keeps its graph (retain_graph=True, gradcheck, compiling)."""
    if torch.compiler.is_compiling():
        return True
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):  # not inside a graph task / older torch: be safe
        return True


def scale_row_grads(grad, count, reduction, *row_grads):
    """Backward of a loss whose per-row gradients were made in the forward: scale them by the
    incoming gradient (per row for "none", divided by the counted rows for the means).

    When the graph is freed after this backward (the usual case) the saved gradients are
    scaled in place: one pass and no second [N, V] buffer. With retain_graph=True they are
    scaled into new tensors, so a later backward sees them unchanged. Entries of
    ``row_grads`` that are None stay None.
    """
    if reduction == "none":
        scale = grad.unsqueeze(-1)
    elif reduction == "sum":
        scale = grad
    else:
        scale = grad / count.clamp(min=1).to(grad.dtype)
    if _graph_is_kept():
        return tuple(None if g is None else (g * scale).to(g.dtype) for g in row_grads)
    return tuple(None if g is None else g.mul_(scale) for g in row_grads)
