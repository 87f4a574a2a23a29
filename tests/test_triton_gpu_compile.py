"""The Triton kernels compile for a GPU (sm_90), checked without one.

The interpreter that runs them on CPU tensors here accepts code the GPU compiler rejects (a
loop-carried variable whose type changes, non-constexpr globals, ...). This compiles each kernel
of the Gumbel-Softmax, adversarial, attack, soft-target and top-k families to PTX / cubin for
a few constexpr variants (dtypes, hard / soft, parameterizations) without launching anything.
The KD kernel has its own check in test_kd_triton.py.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

_SCRIPT = textwrap.dedent(
    """
    import sys
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from adkernels.triton import adversarial as A, attacks as K, gumbel as G, soft_ce as S, topk_kd as P

    TARGET = GPUTarget("cuda", 90, 32)
    family = sys.argv[1]

    def comp(fn, sig, consts):
        src = triton.compiler.ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}},
                                        constexprs=consts)
        triton.compile(src, target=TARGET, options={"num_warps": 8})

    DT = [("*fp32", "*fp32", tl.float32), ("*bf16", "*fp32", tl.float32), ("*fp64", "*fp64", tl.float64)]
    for p, lp, acc in DT:
        if family == "gumbel":
            for hard, save, blk in ((False, False, 4096), (True, True, 4096), (True, False, 16)):
                comp(G._fwd_kernel, {"x_ptr": p, "y_ptr": p, "ys_ptr": p, "tau_ptr": lp, "so_ptr": "*i64",
                                     "V": "i32"}, {"HARD": hard, "SAVE_SOFT": save, "ACC": acc, "BLOCK": blk})
            comp(G._bwd_kernel, {"y_ptr": p, "dy_ptr": p, "dx_ptr": p, "tau_ptr": lp, "V": "i32"},
                 {"ACC": acc, "BLOCK": 4096})
        elif family == "adversarial":
            comp(A._count_kernel, {"src_ptr": "*i64", "counts_ptr": "*i64", "N": "i32"}, {"BLOCK": 1024})
            for k, mode in ((3, 0), (2, 2)):
                comp(A._source_kernel, {"z_ptr": p, "src_ptr": "*i64", "counts_ptr": "*i64", "rows_ptr": lp,
                                        "g_ptr": p, "N": "i32", "w0": "fp64", "w1": "fp64", "w2": "fp64"},
                     {"K": k, "MODE": mode, "MEAN": True, "WRITE_G": True, "ACC": acc, "BLOCK": 1024})
            for kind, role, real in ((0, 0, True), (4, 1, True), (0, 2, False)):
                comp(A._binary_kernel, {"r_ptr": p, "f_ptr": p, "out_ptr": lp, "gr_ptr": p, "gf_ptr": p,
                                        "Mr": "i32", "Mf": "i32", "real_label": "fp64", "real_scale": "fp64",
                                        "fake_scale": "fp64"},
                     {"KIND": kind, "FAKE_ROLE": role, "HAS_REAL": real, "PER_ELEMENT": False, "WRITE_GR": real,
                      "WRITE_GF": True, "ACC": acc, "CHUNK": A.CHUNK, "BLOCK": 1024})
            for k, mode, hard, div, kd, go, blk in ((3, 1, False, 0, True, True, 1024), (3, 2, True, 1, True, True, 1024),
                                                    (2, 1, True, 2, True, False, 16), (3, 1, False, 0, False, False, 16)):
                comp(A._distill_kernel, {"x_ptr": p, "o_ptr": p, "d_ptr": p, "src_ptr": "*i64", "counts_ptr": "*i64",
                                         "tau_ptr": lp, "so_ptr": "*i64", "rows_ptr": lp, "gx_ptr": p, "go_ptr": p,
                                         "gd_ptr": p, "C": "i32", "w0": "fp64", "w1": "fp64", "w2": "fp64",
                                         "kd_scale": "fp64", "temperature": "fp64"},
                     {"K": k, "MODE": mode, "MEAN": True, "HARD": hard, "KD": kd, "DIV": div, "WRITE_GX": True,
                      "WRITE_GO": go, "WRITE_GD": True, "ACC": acc, "BLOCK": blk})
        elif family == "attacks":
            common = {"lo_ptr": lp, "hi_ptr": lp, "B": "i32", "inner": "i32"}
            for linf in (True, False):
                comp(K._pointwise_kernel, {"x_ptr": p, "g_ptr": p, "xn_ptr": p, "out_ptr": p, "step_ptr": lp,
                                           "eps_ptr": lp, **common, "total": "i64", "D": "i32"},
                     {"LINF": linf, "HAS_BOUNDS": True, "ACC": acc, "BLOCK": 1024})
            comp(K._l2_kernel, {"x_ptr": p, "g_ptr": p, "xn_ptr": p, "out_ptr": p, "step_ptr": lp, "eps_ptr": lp,
                                "lo_ptr": lp, "hi_ptr": lp, "D": "i32", "B": "i32", "inner": "i32"},
                 {"HAS_BOUNDS": True, "ACC": acc, "BLOCK": 1024})
            comp(K._random_linf_kernel, {"x_ptr": p, "out_ptr": p, "eps_ptr": lp, "so_ptr": "*i64", "lo_ptr": lp,
                                         "hi_ptr": lp, "total": "i64", "D": "i32", "B": "i32", "inner": "i32"},
                 {"HAS_BOUNDS": True, "ACC": acc, "BLOCK": 1024})
            comp(K._random_l2_kernel, {"x_ptr": p, "out_ptr": p, "eps_ptr": lp, "so_ptr": "*i64", "lo_ptr": lp,
                                       "hi_ptr": lp, "D": "i32", "B": "i32", "inner": "i32"},
                 {"HAS_BOUNDS": True, "ACC": acc, "BLOCK": 1024})
        elif family == "soft_ce":
            comp(S._soft_ce_kernel, {"z_ptr": p, "q_ptr": p, "loss_ptr": lp, "gz_ptr": p, "gq_ptr": p, "V": "i32",
                                     "grad_scale": "fp64"},
                 {"ACC": acc, "WRITE_GZ": True, "WRITE_GQ": True, "BLOCK": 1024})
            comp(S._ada_lab_kernel, {"za_ptr": p, "zb_ptr": p, "y_ptr": "*i64", "out_ptr": p, "w_ptr": lp, "V": "i32",
                                     "max_weight": "fp64", "gamma": "fp64", "bias": "fp64", "temperature": "fp64"},
                 {"ACC": acc, "BLOCK": 1024})
        elif family == "topk_kd":
            for bucket in (False, True):
                comp(P._topk_kd_fwd_kernel, {"z_ptr": p, "ids_ptr": "*i64", "lt_ptr": "*fp32", "y_ptr": "*i64",
                                             "loss_ptr": lp, "g_ptr": p, "V": "i32", "K": "i32",
                                             "ignore_index": "i32", "temperature": "fp64", "alpha": "fp64",
                                             "label_smoothing": "fp64"},
                     {"ACC": acc, "NEED_DIV": True, "NEED_CE": True, "BUCKET": bucket, "NEED_ZSUM": True,
                      "HAS_TARGET": True, "WRITE_G": True, "BLOCK": 1024, "KBLOCK": 64})
    print("compiled", family)
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU tests run the compiled kernels")
@pytest.mark.parametrize("family", ["gumbel", "adversarial", "attacks", "soft_ce", "topk_kd"])
def test_kernels_compile_for_gpu(family):
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, "-c", _SCRIPT, family], env=env, cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and f"compiled {family}" in r.stdout, r.stderr[-4000:]
