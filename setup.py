"""Build adkernels: the CPU extension always, the CUDA extension where a CUDA torch and nvcc exist.

CPU kernels are compiled once per instruction set (default, AVX2, AVX-512) from the same
source; ``csrc/cpu/dispatch.cpp`` picks the widest one the running CPU supports, so a wheel
never depends on ``-march=native``.
"""
import glob
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
INCLUDE = [os.path.join(ROOT, "csrc", "include")]

# Flags per instruction-set variant, selected by the kernel file's suffix (_isa_<name>.cpp).
# at::vec reads CPU_CAPABILITY_*; without them Vectorized silently uses generic code.
ISA_FLAGS = {
    "default": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "avx2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
    "avx512": [
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512bw",
        "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
    ],
}
X86 = platform.machine().lower() in ("x86_64", "amd64")
if not X86:
    ISA_FLAGS = {"default": ISA_FLAGS["default"]}
CXX_FLAGS = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"] + (["-DADK_X86_ISA"] if X86 else [])


def isa_of(src):
    for name in ISA_FLAGS:
        if src.endswith(f"_isa_{name}.cpp"):
            return name
    return None


class Build(BuildExtension):
    """BuildExtension that compiles an extension's sources in parallel (MAX_JOBS, default the CPU
    count), adds per-ISA flags to the CPU kernel wrappers, and skips up-to-date objects."""

    def build_extension(self, ext):
        wrapped = self.compiler._compile
        original_compile = self.compiler.compile

        def compile_one(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            isa = ISA_FLAGS.get(isa_of(src), [])
            if isinstance(extra_postargs, dict):
                flags = dict(extra_postargs, cxx=list(extra_postargs.get("cxx", [])) + isa)
            else:
                flags = list(extra_postargs) + isa
            wrapped(obj, src, ext_, cc_args, flags, pp_opts)

        def parallel_compile(sources, output_dir=None, macros=None, include_dirs=None,
                             debug=0, extra_preargs=None, extra_postargs=None, depends=None):
            macros, objects, extra, pp_opts, build = self.compiler._setup_compile(
                output_dir, macros, include_dirs, sources, depends, extra_postargs)
            cc_args = self.compiler._get_cc_args(pp_opts, debug, extra_preargs)
            jobs = [(obj, *build[obj]) for obj in objects if obj in build and stale(obj, build[obj][0])]
            workers = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
            with ThreadPoolExecutor(max(1, workers)) as pool:
                list(pool.map(lambda j: compile_one(j[0], j[1], j[2], cc_args, extra, pp_opts), jobs))
            return objects

        self.compiler._compile = compile_one
        self.compiler.compile = parallel_compile
        try:
            super().build_extension(ext)
        finally:
            self.compiler._compile = wrapped
            self.compiler.compile = original_compile


def stale(obj, src):
    """Recompile an object only if it is missing or older than its source, the kernel file an
    ISA wrapper includes, or any header (headers are shared, so a header change rebuilds all)."""
    if not os.path.exists(obj):
        return True
    inputs = [src] + HEADERS
    if isa_of(src):
        inputs.append(open(src).read().split('"')[1])
    built = os.path.getmtime(obj)
    return any(os.path.getmtime(p) > built for p in inputs)


def isa_sources():
    """Instantiate every csrc/cpu/*_kernels.cpp once per ISA into build/isa/ wrappers."""
    out_dir = os.path.join(ROOT, "build", "isa")
    os.makedirs(out_dir, exist_ok=True)
    sources = []
    for kernel in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*_kernels.cpp"))):
        base = os.path.splitext(os.path.basename(kernel))[0]
        for name in ISA_FLAGS:
            path = os.path.join(out_dir, f"{base}_isa_{name}.cpp")
            text = f'#include "{kernel}"\n'
            if not os.path.exists(path) or open(path).read() != text:
                with open(path, "w") as f:
                    f.write(text)
            sources.append(os.path.relpath(path, ROOT))
    return sources


# Any change to a header or kernel source relinks the extension (the ISA wrappers only #include);
# stale() decides which objects are recompiled.
HEADERS = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh")))
DEPENDS = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/cpu/*.cpp"))


def extensions():
    cpu_sources = ["csrc/ops.cpp"] + sorted(
        s for s in glob.glob("csrc/cpu/*.cpp") if not s.endswith("_kernels.cpp")
    ) + isa_sources()
    exts = [
        CppExtension(
            "adkernels._C",
            cpu_sources,
            include_dirs=INCLUDE,
            depends=DEPENDS,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    want_cuda = os.environ.get("ADKERNELS_NO_CUDA", "0") != "1"
    if want_cuda and torch.version.cuda is not None and CUDA_HOME is not None:
        # +PTX: newer GPUs than sm_90 JIT-compile the PTX at load time.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        nvidia_inc = [
            p for p in glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu[0-9]*", "include"))
        ]
        exts.append(
            CUDAExtension(
                "adkernels._C_cuda",
                sorted(glob.glob("csrc/cuda/*.cu")),
                include_dirs=INCLUDE + nvidia_inc,
                depends=DEPENDS + sorted(glob.glob("csrc/cuda/*.cuh")),
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
            )
        )
    return exts


setup(
    name="adkernels",
    version="0.1.0",
    description="Fused CPU, CUDA and Triton kernels for adversarial distillation and adversarial training",
    packages=find_packages(include=["adkernels", "adkernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": Build.with_options(use_ninja=False)},
    python_requires=">=3.10",
    install_requires=["numpy"],
    extras_require={
        "triton": ["triton"],
        "test": ["pytest", "hypothesis", "expecttest"],
        "bench": ["matplotlib"],
        "train": ["tqdm", "safetensors", "matplotlib", "mlxtend", "scikit-learn", "pyyaml"],
    },
    entry_points={"console_scripts": ["adkernels=adkernels.cli:main"]},
)
