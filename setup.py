"""Builds the flash_mla Python package: the C++/CUDA core with CMake, then the thin torch
binding (python/csrc) as a CppExtension linked against the core's static library.

    pip install --no-build-isolation .            # or: python setup.py install
    FLASHMLA_PREBUILT_CORE=build/libflashmla.a python setup.py build_ext --inplace

Environment:
    FLASHMLA_PREBUILT_CORE  path of an existing libflashmla.a: skip CMake, only compile and
                            link the binding (seconds, no nvcc needed)
    FLASHMLA_BUILD_DIR      CMake build directory (default: build/)
    MAX_JOBS                parallel compile jobs for the core
    CUDA_HOME               CUDA toolkit (default: found from nvcc, like torch does)
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension

ROOT = Path(__file__).resolve().parent


def cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or CUDA_HOME
    if not home and shutil.which("nvcc"):
        home = str(Path(shutil.which("nvcc")).resolve().parents[1])
    if not home or not Path(home).is_dir():
        raise SystemExit("flash_mla: CUDA toolkit not found; set CUDA_HOME")
    return Path(home)


def build_core():
    """Path of libflashmla.a: the prebuilt one, or built here with CMake (library target only)."""
    prebuilt = os.environ.get("FLASHMLA_PREBUILT_CORE")
    if prebuilt:
        lib = Path(prebuilt).expanduser().resolve()
        if not lib.is_file():
            raise SystemExit(f"flash_mla: FLASHMLA_PREBUILT_CORE={prebuilt} is not a file")
        return lib
    cmake = shutil.which("cmake")
    if cmake is None:
        raise SystemExit("flash_mla: cmake >= 3.25 is needed to build the core "
                         "(or set FLASHMLA_PREBUILT_CORE)")
    build = Path(os.environ.get("FLASHMLA_BUILD_DIR", ROOT / "build")).resolve()
    configure = [cmake, "-S", str(ROOT), "-B", str(build)]
    if not (build / "CMakeCache.txt").exists():
        # First configure only: an existing build dir (a developer's, with tests on) keeps its
        # generator and options; we just build the library target in it.
        configure += ["-DCMAKE_BUILD_TYPE=Release", "-DFLASHMLA_BUILD_TESTS=OFF",
                      "-DFLASHMLA_BUILD_BENCHMARKS=OFF"]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        nvcc = cuda_home() / "bin" / "nvcc"
        if nvcc.is_file():
            configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    subprocess.check_call(configure)
    jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
    subprocess.check_call([cmake, "--build", str(build), "--target", "flashmla",
                           "--parallel", jobs])
    return build / "libflashmla.a"


class BuildExt(BuildExtension):
    """Builds (or finds) the core first, then links it into the binding. Done here rather than
    at import so that metadata-only commands (egg_info, sdist) need neither CMake nor CUDA."""

    def run(self):
        lib = build_core()
        home = cuda_home()
        incs = [home / "include", home / "targets" / "x86_64-linux" / "include"]
        libs = [home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib"]
        for ext in self.extensions:
            ext.extra_objects.append(str(lib))
            ext.depends.append(str(lib))  # relink when the core changes
            ext.include_dirs += [str(p) for p in incs if p.is_dir()]
            ext.library_dirs += [str(p) for p in libs if p.is_dir()]
        super().run()


setup(
    name="flash_mla",
    version="0.1.0",
    description="FlashMLA-compatible MLA decoding kernels for Hopper (sm_90a)",
    package_dir={"": "python"},
    packages=["flash_mla"],
    ext_modules=[
        CppExtension(
            name="flash_mla._C",
            sources=["python/csrc/flash_mla_torch.cpp"],
            include_dirs=[str(ROOT / "include")],
            # c10_cuda: CUDAGuard / current stream; cudart: the core's kernels and the shared
            # CUDA runtime that torch has already loaded (same soname, so one runtime state).
            libraries=["c10_cuda", "cudart"],
            extra_compile_args=["-O2"],
        )
    ],
    cmdclass={"build_ext": BuildExt},
    # setuptools' own build tree under the (ignored) CMake one, not a second top-level dir
    options={"build": {"build_base": "build/python"}},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    zip_safe=False,
)
