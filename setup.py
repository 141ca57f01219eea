"""Build of fec-mm: the Python package plus the optional CPU clustering kernels.

The C++ extension ``fec_mm._ext`` is built with torch's cpp_extension when
torch and a compiler are present; without it fec_mm still works through the
PyTorch reference ops (and logs that once).
"""
import glob
import os
import subprocess

from setuptools import find_packages, setup


def ext_modules():
    sources = sorted(glob.glob(os.path.join('fec_mm', 'ops', 'csrc', '*.cpp')))
    if not sources or os.environ.get('FEC_MM_NO_EXT') == '1':
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return [], {}
    from setuptools.errors import CompileError, LinkError

    class OptionalBuildExtension(BuildExtension.with_options(use_ninja=True)):
        """A missing or failing compiler leaves fec_mm on the reference ops
        (logged at run time) instead of failing the install;
        FEC_MM_REQUIRE_EXT=1 makes it an error."""

        def build_extensions(self):
            try:
                super().build_extensions()  # also checks the compiler first
            except (CompileError, LinkError, OSError, RuntimeError,
                    subprocess.CalledProcessError) as error:
                if os.environ.get('FEC_MM_REQUIRE_EXT') == '1':
                    raise
                self.extensions = []  # nothing to copy or install
                self.warn(f'fec_mm: building fec_mm._ext failed ({error}); fec_mm will use '
                          'the PyTorch reference clustering ops')

    ext = CppExtension('fec_mm._ext', sources,
                       extra_compile_args=['-O3', '-fopenmp'],
                       extra_link_args=['-fopenmp'])
    return [ext], {'build_ext': OptionalBuildExtension}


modules, cmdclass = ext_modules()
setup(
    name='fec-mm',
    version='0.1.0',
    description='FEC (Feature Extraction with Clustering) backbones for OpenMMLab',
    packages=find_packages(include=['fec_mm', 'fec_mm.*']),
    package_data={'fec_mm.ops': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.9',
    ext_modules=modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
